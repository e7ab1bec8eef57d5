//! `version`: the plugin's version, and the version of the populator the cluster runs (read
//! from its Deployment). Works without a cluster: the populator is then "unknown".

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde::Serialize;

use crate::cli::{KubeOptions, OutputFormat, VersionArgs, VersionFormat};
use crate::cluster::{self, explain_for};
use crate::commands::install::POPULATOR_NAME;

/// This plugin's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The label `install` puts on the populator Deployment: the plugin version that installed it.
pub const VERSION_LABEL: &str = "app.kubernetes.io/version";

/// How long `version` waits for a cluster before calling the populator unknown.
const CLUSTER_WAIT: Duration = Duration::from_secs(10);

/// What `version -o json|yaml` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// This binary.
    pub plugin: Plugin,
    /// The populator in the cluster.
    pub populator: Populator,
}

/// This binary.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plugin {
    /// The plugin's version.
    pub version: String,
    /// The image `install` and `create` use (`VOLBACKUP_IMAGE`, else the release image).
    pub image: String,
}

/// Whether the populator was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum State {
    /// Its Deployment exists.
    Installed,
    /// The cluster has no populator Deployment.
    NotInstalled,
    /// The cluster could not be asked.
    Unknown,
}

/// The populator as its Deployment shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Populator {
    /// Found, missing, or not known.
    pub state: State,
    /// The namespace looked in.
    pub namespace: String,
    /// The version it runs (its Deployment's version label, else its image tag).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The image it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Whether the Deployment has an available replica.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// Why the state is not `installed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The tag of an image reference (`repo:tag`, not a digest, not a registry port).
pub fn image_tag(image: &str) -> Option<&str> {
    let name = image.split('@').next().unwrap_or(image);
    let last = name.rsplit('/').next().unwrap_or(name);
    last.split_once(':')
        .map(|(_, tag)| tag)
        .filter(|t| !t.is_empty())
}

/// The version a populator Deployment runs: its version label, else its image's tag.
pub fn deployed_version(d: &Deployment) -> Option<String> {
    d.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(VERSION_LABEL).cloned())
        .or_else(|| deployed_image(d).and_then(|i| image_tag(&i).map(str::to_string)))
}

/// The image of the populator container.
pub fn deployed_image(d: &Deployment) -> Option<String> {
    let containers = &d.spec.template.spec.as_ref()?.containers;
    containers
        .iter()
        .find(|c| c.name == "populator")
        .or(containers.first())
        .and_then(|c| c.image.clone())
}

/// The warning for a populator of another version than the plugin, if it is one.
pub fn mismatch(populator: &Populator) -> Option<String> {
    let theirs = populator.version.as_deref()?;
    (theirs != VERSION).then(|| {
        format!(
            "the populator in {} runs version {theirs}, this plugin is {VERSION}: run `kubectl volbackup install` to install the matching populator",
            populator.namespace
        )
    })
}

/// Reads the populator Deployment; never fails: what cannot be read is `Unknown` with the
/// reason.
pub async fn populator(kube: &KubeOptions, namespace: &str) -> Populator {
    let unknown = |reason: String| Populator {
        state: State::Unknown,
        namespace: namespace.to_string(),
        version: None,
        image: None,
        ready: None,
        reason: Some(reason),
    };
    let read = async {
        let kube = cluster::connect(kube).await?;
        let api: Api<Deployment> = Api::namespaced(kube.client, namespace);
        api.get_opt(POPULATOR_NAME)
            .await
            .map_err(|e| explain_for::<Deployment>(e, "get", &(), Some(namespace)))
    };
    match tokio::time::timeout(CLUSTER_WAIT, read).await {
        Err(_) => unknown(format!(
            "the cluster did not answer within {} s",
            CLUSTER_WAIT.as_secs()
        )),
        Ok(Err(e)) => unknown(crate::one_line(&e)),
        Ok(Ok(None)) => Populator {
            state: State::NotInstalled,
            namespace: namespace.to_string(),
            version: None,
            image: None,
            ready: None,
            reason: Some(format!(
                "no Deployment {namespace}/{POPULATOR_NAME}: run `kubectl volbackup install`"
            )),
        },
        Ok(Ok(Some(d))) => Populator {
            state: State::Installed,
            namespace: namespace.to_string(),
            version: deployed_version(&d),
            image: deployed_image(&d),
            ready: Some(crate::commands::install::available(&d)),
            reason: None,
        },
    }
}

/// The lines `version` prints for people.
pub fn text(report: &Report) -> String {
    let p = &report.populator;
    let populator = match p.state {
        State::Installed => {
            let mut details = vec![format!("Deployment {}/{POPULATOR_NAME}", p.namespace)];
            if let Some(image) = &p.image {
                details.insert(0, format!("image {image}"));
            }
            details.push(if p.ready == Some(true) {
                "ready".to_string()
            } else {
                "not ready".to_string()
            });
            format!(
                "{} ({})",
                p.version.as_deref().unwrap_or("unknown version"),
                details.join(", ")
            )
        }
        State::NotInstalled => format!(
            "not installed ({})",
            p.reason.as_deref().unwrap_or_default()
        ),
        State::Unknown => format!("unknown ({})", p.reason.as_deref().unwrap_or_default()),
    };
    format!(
        "Plugin version:    {} (image {})\nPopulator version: {populator}\n",
        report.plugin.version, report.plugin.image
    )
}

/// `version`
pub fn run(args: &VersionArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let kube = KubeOptions {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
        namespace: None,
    };
    let populator = if args.client {
        Populator {
            state: State::Unknown,
            namespace: args.populator_namespace.clone(),
            version: None,
            image: None,
            ready: None,
            reason: Some("not asked (--client)".into()),
        }
    } else {
        rt.block_on(populator(&kube, &args.populator_namespace))
    };
    let report = Report {
        plugin: Plugin {
            version: VERSION.to_string(),
            image: std::env::var(volbackup_populator::mover::IMAGE_ENV)
                .ok()
                .filter(|i| !i.is_empty())
                .unwrap_or_else(volbackup_populator::mover::default_image),
        },
        populator,
    };
    if let Some(w) = mismatch(&report.populator) {
        eprintln!("warning: {w}");
    }
    match args.output {
        VersionFormat::Text => print!("{}", text(&report)),
        VersionFormat::Json => super::print_structured(OutputFormat::Json, &report)?,
        VersionFormat::Yaml => super::print_structured(OutputFormat::Yaml, &report)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags_are_read_past_registry_ports_and_digests() {
        assert_eq!(
            image_tag("ghcr.io/volbackup/volbackup:0.1.0"),
            Some("0.1.0")
        );
        assert_eq!(
            image_tag("127.0.0.1:5000/volbackup/volbackup:0.2.0"),
            Some("0.2.0")
        );
        assert_eq!(image_tag("127.0.0.1:5000/volbackup/volbackup"), None);
        assert_eq!(image_tag("ghcr.io/volbackup/volbackup@sha256:abcd"), None);
        assert_eq!(image_tag("volbackup:1.0@sha256:abcd"), Some("1.0"));
    }

    fn installed(version: &str) -> Populator {
        Populator {
            state: State::Installed,
            namespace: "volbackup-system".into(),
            version: Some(version.into()),
            image: None,
            ready: Some(true),
            reason: None,
        }
    }

    #[test]
    fn only_another_version_is_a_mismatch() {
        assert_eq!(mismatch(&installed(VERSION)), None);
        let w = mismatch(&installed("0.0.1")).expect("a warning");
        assert!(w.contains("0.0.1") && w.contains(VERSION), "{w}");
        assert!(w.contains("kubectl volbackup install"), "{w}");
    }

    #[test]
    fn an_unknown_populator_is_no_mismatch_and_says_why() {
        let p = Populator {
            state: State::Unknown,
            namespace: "volbackup-system".into(),
            version: None,
            image: None,
            ready: None,
            reason: Some("cannot load a kubeconfig".into()),
        };
        assert_eq!(mismatch(&p), None);
        let report = Report {
            plugin: Plugin {
                version: VERSION.into(),
                image: "img".into(),
            },
            populator: p,
        };
        assert!(
            text(&report).contains("Populator version: unknown (cannot load a kubeconfig)"),
            "{}",
            text(&report)
        );
    }
}
