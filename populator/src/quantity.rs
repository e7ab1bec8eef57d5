//! Kubernetes resource quantities (`10Gi`, `500M`, `1e9`, `1.5Gi`) as bytes.

/// Bytes in a quantity, rounded up; `None` when it is not a quantity.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let value: f64 = number.parse().ok()?;
    if value < 0.0 || !value.is_finite() {
        return None;
    }
    let factor: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    let bytes = (value * factor).ceil();
    (bytes <= u64::MAX as f64).then_some(bytes as u64)
}

/// The shortest exact binary form of a byte count (`1Gi`, `1536Mi`, `1000`).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let mut unit = None;
    let mut value = bytes;
    for u in UNITS {
        if value == 0 || !value.is_multiple_of(1024) {
            break;
        }
        value /= 1024;
        unit = Some(u);
    }
    format!("{value}{}", unit.unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_decimal_and_exponent_suffixes() {
        assert_eq!(parse_bytes("10Gi"), Some(10 << 30));
        assert_eq!(parse_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_bytes("500M"), Some(500_000_000));
        assert_eq!(parse_bytes("1e3"), Some(1000));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("1500m"), Some(2));
    }

    #[test]
    fn nonsense_is_refused() {
        assert_eq!(parse_bytes("ten"), None);
        assert_eq!(parse_bytes("10GB"), None);
        assert_eq!(parse_bytes(""), None);
        assert_eq!(parse_bytes("-1Gi"), None);
    }

    #[test]
    fn formatting_keeps_the_exact_value() {
        assert_eq!(format_bytes(1 << 30), "1Gi");
        assert_eq!(format_bytes(1536 << 20), "1536Mi");
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(format_bytes(0), "0");
    }
}
