//! The krew manifest: `krew/volbackup.yaml` with `{{VERSION}}` and each platform's
//! `{{SHA256_<OS>_<ARCH>}}` filled in, and, with `--partial`, the platforms not built left out.
//!
//! Rendering edits the template's text rather than re-serialising parsed YAML, so the published
//! manifest keeps the template's layout and its block-style description. The result is then
//! parsed and checked: every platform it lists must download the archive packed for its labels
//! and carry that archive's sum, so a template that drifts from the archive names fails here and
//! not in a user's `kubectl krew install`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail};

use super::Target;

/// The manifest for `version` whose platforms carry `sums`. A platform of the template without a
/// sum is an error naming its placeholder, unless `partial` (then the platform is left out).
pub fn render(
    template: &str,
    version: &str,
    sums: &BTreeMap<Target, String>,
    partial: bool,
) -> anyhow::Result<String> {
    // The template's leading comment speaks about the template; the release says what it is.
    let lines: Vec<(usize, &str)> = template
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .skip_while(|(_, l)| l.starts_with('#'))
        .collect();
    let (head, items, tail) = split_platforms(&lines)?;

    let mut kept = Vec::new();
    let mut listed = BTreeSet::new();
    let mut missing = Vec::new();
    for item in items {
        let target = platform_of(item)?;
        if !listed.insert(target) {
            bail!(
                "line {}: a second platform uses {}",
                item[0].0,
                braced(&target.placeholder())
            );
        }
        if sums.contains_key(&target) {
            kept.push(item);
        } else {
            missing.push(target);
        }
    }
    if let Some(target) = sums.keys().find(|t| !listed.contains(t)) {
        bail!(
            "no platform has {}, so the {} archive could not be installed",
            braced(&target.placeholder()),
            target.triple()
        );
    }
    if !missing.is_empty() && !partial {
        let placeholders: Vec<_> = missing.iter().map(|t| braced(&t.placeholder())).collect();
        let triples: Vec<_> = missing.iter().map(|t| t.triple()).collect();
        bail!(
            "{} left unfilled: no archive was packed for {} (build it, or pass --partial to leave \
             such platforms out)",
            placeholders.join(", "),
            triples.join(", ")
        );
    }

    let mut text = String::from(
        "# krew plugin manifest, rendered by `cargo xtask release` from krew/volbackup.yaml.\n",
    );
    let body = head.iter().chain(kept.into_iter().flatten()).chain(tail);
    for (_, line) in body {
        text.push_str(line);
        text.push('\n');
    }
    text = text.replace("{{VERSION}}", version);
    for (target, sum) in sums {
        text = text.replace(&braced(&target.placeholder()), sum);
    }
    if let Some(name) = placeholders(&text).first() {
        bail!("unknown placeholder {}", braced(name));
    }
    check(&text, version, sums)?;
    Ok(text)
}

type Lines<'a> = [(usize, &'a str)];

/// The lines before the `platforms:` list, its items, and the lines after it.
fn split_platforms<'a, 'b>(
    lines: &'b Lines<'a>,
) -> anyhow::Result<(&'b Lines<'a>, Vec<&'b Lines<'a>>, &'b Lines<'a>)> {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let key = lines
        .iter()
        .position(|(_, l)| l.trim() == "platforms:")
        .context("no `platforms:` list")?;
    let first = lines[key + 1..]
        .iter()
        .position(|(_, l)| !l.trim().is_empty())
        .map(|i| key + 1 + i)
        .filter(|&i| lines[i].1.trim_start().starts_with("- "))
        .context("`platforms:` is not followed by a list")?;
    let item_indent = indent(lines[first].1);
    let starts_item = |l: &str| indent(l) == item_indent && l.trim_start().starts_with("- ");
    let end = lines[first..]
        .iter()
        .position(|(_, l)| !(l.trim().is_empty() || indent(l) > item_indent || starts_item(l)))
        .map_or(lines.len(), |i| first + i);

    let mut items: Vec<&Lines> = Vec::new();
    let mut start = first;
    for i in first + 1..end {
        if starts_item(lines[i].1) {
            items.push(&lines[start..i]);
            start = i;
        }
    }
    items.push(&lines[start..end]);
    Ok((&lines[..first], items, &lines[end..]))
}

/// The platform a template item is for: the one whose sha256 placeholder it holds.
fn platform_of(item: &Lines) -> anyhow::Result<Target> {
    let line = item[0].0;
    let sums: Vec<&str> = item
        .iter()
        .flat_map(|(_, l)| placeholders(l))
        .filter(|name| name.starts_with("SHA256_"))
        .collect();
    let [name] = sums[..] else {
        bail!(
            "line {line}: a platform needs exactly one {} placeholder, this one has {}",
            braced("SHA256_<OS>_<ARCH>"),
            sums.len()
        );
    };
    Target::ALL
        .into_iter()
        .find(|t| t.placeholder() == name)
        .with_context(|| {
            let known: Vec<_> = Target::ALL
                .iter()
                .map(|t| braced(&t.placeholder()))
                .collect();
            format!(
                "line {line}: {} names no platform that is built (known: {})",
                braced(name),
                known.join(", ")
            )
        })
}

/// The names of the `{{NAME}}` placeholders in `text`, in order.
fn placeholders(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else { break };
        names.push(&after[..close]);
        rest = &after[close + 2..];
    }
    names
}

fn braced(name: &str) -> String {
    format!("{{{{{name}}}}}")
}

/// The fields of the rendered manifest that must agree with the archives.
#[derive(serde::Deserialize)]
struct Plugin {
    spec: Spec,
}

#[derive(serde::Deserialize)]
struct Spec {
    version: String,
    platforms: Vec<Platform>,
}

#[derive(serde::Deserialize)]
struct Platform {
    selector: Selector,
    uri: String,
    sha256: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Selector {
    match_labels: BTreeMap<String, String>,
}

/// Every platform of the rendered manifest downloads the archive built for its `os`/`arch`
/// labels and carries that archive's sum.
fn check(text: &str, version: &str, sums: &BTreeMap<Target, String>) -> anyhow::Result<()> {
    let plugin: Plugin = serde_yaml::from_str(text).context("the rendered manifest")?;
    if plugin.spec.version != format!("v{version}") {
        bail!(
            "spec.version is {:?}, not \"v{version}\"",
            plugin.spec.version
        );
    }
    for platform in &plugin.spec.platforms {
        let label = |key: &str| platform.selector.match_labels.get(key).map(String::as_str);
        let (os, arch) = (label("os").unwrap_or("?"), label("arch").unwrap_or("?"));
        let target = Target::ALL
            .into_iter()
            .find(|t| t.os() == os && t.arch() == arch)
            .with_context(|| format!("a platform selects os {os}, arch {arch}: none is built"))?;
        let archive = target.archive_name(version);
        if !platform.uri.ends_with(&format!("/{archive}")) {
            bail!(
                "the {os}/{arch} platform downloads {}, but its archive is {archive}",
                platform.uri
            );
        }
        if sums.get(&target) != Some(&platform.sha256) {
            bail!(
                "the {os}/{arch} platform's sha256 is not the sum of {archive} (is its placeholder \
                 {}?)",
                braced(&target.placeholder())
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = include_str!("../../../krew/volbackup.yaml");

    fn sum(byte: char) -> String {
        byte.to_string().repeat(64)
    }

    /// The platforms of a rendered manifest as (os, arch, uri, sha256), read without the
    /// renderer's own types.
    fn platforms(manifest: &str) -> Vec<[String; 4]> {
        let doc: serde_yaml::Value = serde_yaml::from_str(manifest).unwrap();
        let text = |v: &serde_yaml::Value| v.as_str().unwrap().to_string();
        doc["spec"]["platforms"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| {
                let labels = &p["selector"]["matchLabels"];
                [
                    text(&labels["os"]),
                    text(&labels["arch"]),
                    text(&p["uri"]),
                    text(&p["sha256"]),
                ]
            })
            .collect()
    }

    fn uri(version: &str, triple: &str) -> String {
        format!(
            "https://github.com/volbackup/volbackup/releases/download/v{version}/kubectl-volbackup-v{version}-{triple}.tar.gz"
        )
    }

    #[test]
    fn every_platform_gets_the_version_and_its_own_sum() {
        let sums = BTreeMap::from([
            (Target::LinuxAmd64, sum('a')),
            (Target::LinuxArm64, sum('b')),
            (Target::DarwinAmd64, sum('c')),
            (Target::DarwinArm64, sum('d')),
        ]);
        let manifest = render(TEMPLATE, "1.2.3", &sums, false).unwrap();
        assert_eq!(
            platforms(&manifest),
            [
                [
                    "linux",
                    "amd64",
                    &uri("1.2.3", "x86_64-unknown-linux-musl"),
                    &sum('a')
                ],
                [
                    "linux",
                    "arm64",
                    &uri("1.2.3", "aarch64-unknown-linux-musl"),
                    &sum('b')
                ],
                [
                    "darwin",
                    "amd64",
                    &uri("1.2.3", "x86_64-apple-darwin"),
                    &sum('c')
                ],
                [
                    "darwin",
                    "arm64",
                    &uri("1.2.3", "aarch64-apple-darwin"),
                    &sum('d')
                ],
            ]
            .map(|p| p.map(String::from))
        );
        let doc: serde_yaml::Value = serde_yaml::from_str(&manifest).unwrap();
        assert_eq!(doc["spec"]["version"].as_str(), Some("v1.2.3"));
        assert_eq!(doc["metadata"]["name"].as_str(), Some("volbackup"));
        assert!(!manifest.contains("{{"), "{manifest}");
        assert!(
            !manifest.contains("template"),
            "the template's own comment stays behind"
        );
    }

    #[test]
    fn partial_leaves_out_the_platforms_not_built() {
        let sums = BTreeMap::from([
            (Target::LinuxArm64, sum('b')),
            (Target::DarwinArm64, sum('d')),
        ]);
        let manifest = render(TEMPLATE, "0.1.0", &sums, true).unwrap();
        assert_eq!(
            platforms(&manifest),
            [
                [
                    "linux",
                    "arm64",
                    &uri("0.1.0", "aarch64-unknown-linux-musl"),
                    &sum('b')
                ],
                [
                    "darwin",
                    "arm64",
                    &uri("0.1.0", "aarch64-apple-darwin"),
                    &sum('d')
                ],
            ]
            .map(|p| p.map(String::from))
        );
    }

    #[test]
    fn a_platform_not_built_is_an_error_naming_its_placeholder_without_partial() {
        let sums = BTreeMap::from([
            (Target::LinuxAmd64, sum('a')),
            (Target::LinuxArm64, sum('b')),
            (Target::DarwinArm64, sum('d')),
        ]);
        let err = render(TEMPLATE, "0.1.0", &sums, false).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "{{SHA256_DARWIN_AMD64}} left unfilled: no archive was packed for x86_64-apple-darwin \
             (build it, or pass --partial to leave such platforms out)"
        );
    }

    #[test]
    fn a_uri_that_names_another_archive_is_refused() {
        let template = TEMPLATE.replace(
            "x86_64-unknown-linux-musl.tar.gz",
            "x86_64-unknown-linux-gnu.tar.gz",
        );
        let sums = BTreeMap::from([(Target::LinuxAmd64, sum('a'))]);
        let err = render(&template, "0.1.0", &sums, true).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!(
                "the linux/amd64 platform downloads {}, but its archive is \
                 kubectl-volbackup-v0.1.0-x86_64-unknown-linux-musl.tar.gz",
                uri("0.1.0", "x86_64-unknown-linux-gnu")
            )
        );
    }

    #[test]
    fn a_platform_holding_another_platforms_placeholder_is_refused() {
        let template = TEMPLATE
            .replace("{{SHA256_LINUX_AMD64}}", "{{SWAP}}")
            .replace("{{SHA256_LINUX_ARM64}}", "{{SHA256_LINUX_AMD64}}")
            .replace("{{SWAP}}", "{{SHA256_LINUX_ARM64}}");
        let sums = BTreeMap::from([
            (Target::LinuxAmd64, sum('a')),
            (Target::LinuxArm64, sum('b')),
        ]);
        let err = render(&template, "0.1.0", &sums, true).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "the linux/amd64 platform's sha256 is not the sum of \
             kubectl-volbackup-v0.1.0-x86_64-unknown-linux-musl.tar.gz (is its placeholder \
             {{SHA256_LINUX_AMD64}}?)"
        );
    }

    #[test]
    fn an_unknown_placeholder_is_refused() {
        let template = TEMPLATE.replace("homepage:", "caveats: \"{{CAVEATS}}\"\n  homepage:");
        let sums = BTreeMap::from([(Target::LinuxAmd64, sum('a'))]);
        let err = render(&template, "0.1.0", &sums, true).unwrap_err();
        assert_eq!(format!("{err:#}"), "unknown placeholder {{CAVEATS}}");
    }

    #[test]
    fn a_built_target_without_a_platform_in_the_template_is_refused() {
        let template = "kind: Plugin\nspec:\n  version: \"v{{VERSION}}\"\n  platforms:\n    \
            - selector: {matchLabels: {os: linux, arch: amd64}}\n      \
              uri: https://example/kubectl-volbackup-v{{VERSION}}-x86_64-unknown-linux-musl.tar.gz\n      \
              sha256: \"{{SHA256_LINUX_AMD64}}\"\n";
        let sums = BTreeMap::from([(Target::LinuxAmd64, sum('a'))]);
        assert_eq!(
            platforms(&render(template, "1.0.0", &sums, false).unwrap()).len(),
            1
        );
        let sums = BTreeMap::from([
            (Target::LinuxAmd64, sum('a')),
            (Target::DarwinArm64, sum('d')),
        ]);
        let err = render(template, "1.0.0", &sums, false).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "no platform has {{SHA256_DARWIN_ARM64}}, so the aarch64-apple-darwin archive could \
             not be installed"
        );
    }

    #[test]
    fn a_platform_whose_placeholder_names_no_target_or_that_has_none_is_refused() {
        let template = TEMPLATE.replace("SHA256_DARWIN_AMD64", "SHA256_DARWIN_PPC");
        let sums = BTreeMap::from([(Target::DarwinAmd64, sum('c'))]);
        let err = render(&template, "0.1.0", &sums, true).unwrap_err();
        assert!(
            format!("{err:#}").ends_with(
                "{{SHA256_DARWIN_PPC}} names no platform that is built (known: \
                 {{SHA256_LINUX_AMD64}}, {{SHA256_LINUX_ARM64}}, {{SHA256_DARWIN_AMD64}}, \
                 {{SHA256_DARWIN_ARM64}})"
            ),
            "{err:#}"
        );
        let template = TEMPLATE.replace(
            "      sha256: \"{{SHA256_DARWIN_AMD64}}\"\n",
            "      sha256: \"0\"\n",
        );
        let err = render(&template, "0.1.0", &sums, true).unwrap_err();
        assert!(
            format!("{err:#}")
                .ends_with("exactly one {{SHA256_<OS>_<ARCH>}} placeholder, this one has 0"),
            "{err:#}"
        );
    }

    #[test]
    fn items_are_split_where_the_list_is_indented_like_its_key() {
        let template = "spec:\n  platforms:\n  - a: 1\n    b: 2\n  - c: 3\n  other: x\n";
        let lines: Vec<(usize, &str)> = template.lines().enumerate().collect();
        let (head, items, tail) = split_platforms(&lines).unwrap();
        assert_eq!(head.len(), 2);
        assert_eq!(items.iter().map(|i| i.len()).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(tail, &[(5, "  other: x")]);
    }
}
