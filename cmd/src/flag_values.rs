//! The typed values of flags: clap parses and checks them, so a command gets a `Duration` or a
//! checked size and never parses text itself.
//!
//! A parser's error names the value and says what to give instead; `crate::run` prints it on
//! one line after the flag (`error: --size "lots" is not a Kubernetes quantity: ...`), exit
//! code 1, like every other error of a command.

use std::time::Duration;

/// Why a parser below refused a value: a sentence that starts with the value. Its own type, so
/// that [`refused_value`] prints only these on one line and leaves clap's own checks (a number
/// out of range) to clap.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The access modes a PVC may ask for.
pub const ACCESS_MODES: &[&str] = &[
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

/// Parses `90s`, `10m`, `1h30m`, `2h`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, Refused> {
    let bad = || {
        Refused(format!(
            "{text:?} is not a duration: use a number with a unit, like 90s, 10m or 1h30m"
        ))
    };
    let t = text.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        total = total.saturating_add(n.saturating_mul(unit));
    }
    if !num.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// A duration as [`parse_duration`] reads it back, in whole seconds: `10m`, `1h30m`, `45s`,
/// `0s`. For flags handed on to another process (the populator, a mover pod).
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return "0s".to_string();
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, 'h'), (m, 'm'), (s, 's')] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// A PVC size: a Kubernetes quantity (`10Gi`, `500Mi`, `1T`), kept as written.
pub fn parse_size(text: &str) -> Result<String, Refused> {
    match volbackup_populator::quantity::parse_bytes(text) {
        Some(_) => Ok(text.to_string()),
        None => Err(Refused(format!(
            "{text:?} is not a Kubernetes quantity: use a size like 10Gi or 500Mi"
        ))),
    }
}

/// A PVC access mode, spelled as the API spells it.
pub fn parse_access_mode(text: &str) -> Result<String, Refused> {
    if ACCESS_MODES.contains(&text) {
        Ok(text.to_string())
    } else {
        Err(Refused(format!(
            "{text:?} is not an access mode: use one of {}",
            ACCESS_MODES.join(", ")
        )))
    }
}

/// The Pod Security level `install` enforces on the populator's namespace.
// The variants carry no doc comments: clap would print them as a list in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PodSecurity {
    // What the populate pods need.
    Baseline,
    // For restores from a repository that is a node directory (hostPath).
    Privileged,
}

impl PodSecurity {
    /// The value of the `pod-security.kubernetes.io/enforce` label.
    pub fn label(self) -> &'static str {
        match self {
            PodSecurity::Baseline => "baseline",
            PodSecurity::Privileged => "privileged",
        }
    }
}

/// The one line to print for a flag value one of the parsers above refused (`--size "lots" is
/// not a Kubernetes quantity: ...`); `None` for every other command-line error, which clap
/// prints itself.
pub fn refused_value(err: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if err.kind() != ErrorKind::ValueValidation {
        return None;
    }
    let reason = std::error::Error::source(err)?
        .downcast_ref::<Refused>()?
        .to_string();
    let flag = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg.split(' ').next().unwrap_or(arg).to_string(),
        _ => return Some(reason),
    };
    Some(format!("{flag} {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn durations_accept_units_and_plain_seconds() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("42"), Ok(Duration::from_secs(42)));
    }

    #[test]
    fn durations_without_a_known_unit_are_refused() {
        for bad in ["", "10x", "m", "5m3", "-5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn formatted_durations_read_back_as_the_same_duration() {
        for secs in [0, 5, 59, 60, 90, 600, 3600, 5400, 86400, 90061] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{secs} s");
        }
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_secs(86400)), "24h");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }

    #[test]
    fn sizes_are_kubernetes_quantities_kept_as_written() {
        assert_eq!(parse_size("10Gi").as_deref(), Ok("10Gi"));
        assert_eq!(parse_size("1T").as_deref(), Ok("1T"));
        for bad in ["lots", ""] {
            let err = parse_size(bad).unwrap_err();
            assert!(
                err.0.contains("not a Kubernetes quantity"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn access_modes_are_the_apis_four() {
        for mode in ACCESS_MODES {
            assert_eq!(parse_access_mode(mode).as_deref(), Ok(*mode));
        }
        let err = parse_access_mode("RWX").unwrap_err();
        assert!(err.0.contains("ReadWriteMany"), "{err}");
        assert!(parse_access_mode("readwriteonce").is_err());
    }

    #[test]
    fn pod_security_levels_are_the_labels_values() {
        use clap::ValueEnum;
        for level in PodSecurity::value_variants() {
            let name = level.to_possible_value().unwrap();
            assert_eq!(name.get_name(), level.label());
        }
    }

    #[derive(Debug, Parser)]
    struct Flags {
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        #[arg(long, value_parser = parse_size)]
        size: Option<String>,
        #[arg(long, value_enum)]
        level: Option<PodSecurity>,
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        count: Option<u16>,
    }

    #[test]
    fn a_refused_value_is_one_line_that_names_the_flag() {
        let err = Flags::try_parse_from(["x", "--size", "lots"]).unwrap_err();
        assert_eq!(
            refused_value(&err).as_deref(),
            Some("--size \"lots\" is not a Kubernetes quantity: use a size like 10Gi or 500Mi")
        );
        let err = Flags::try_parse_from(["x", "--timeout=10x"]).unwrap_err();
        let line = refused_value(&err).unwrap();
        assert!(
            line.starts_with("--timeout \"10x\" is not a duration"),
            "{line}"
        );
    }

    #[test]
    fn other_command_line_errors_are_left_to_clap() {
        let err = Flags::try_parse_from(["x", "--level", "strict"]).unwrap_err();
        assert_eq!(refused_value(&err), None);
        let err = Flags::try_parse_from(["x", "--nope"]).unwrap_err();
        assert_eq!(refused_value(&err), None);
        let err = Flags::try_parse_from(["x", "--count", "0"]).unwrap_err();
        assert_eq!(refused_value(&err), None, "clap's own range check");
    }

    #[test]
    fn parsed_flags_arrive_typed() {
        let f = Flags::try_parse_from(["x", "--timeout", "2m", "--level", "privileged"]).unwrap();
        assert_eq!(f.timeout, Some(Duration::from_secs(120)));
        assert_eq!(f.level, Some(PodSecurity::Privileged));
    }
}
