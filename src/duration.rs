//! Durations as people write them: `100s`, `500ms`, `1.5s`, `2m`, `1h` (YAML and command line).

use std::time::Duration;

/// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h`. A bare number is refused so that
/// `interval: 5` cannot silently mean five milliseconds or five seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` has no unit: write e.g. `5s` or `500ms`"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a number: write e.g. `5s`"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` is out of range"))
}

/// Renders a duration the way [`parse`] reads it back (`1.5s`, `250ms`).
pub fn format(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Renders a duration for another program's command line: whole milliseconds exactly
/// (`20000ms`), anything finer in seconds with every digit [`parse`] needs.
pub fn format_exact(d: Duration) -> String {
    match d.subsec_nanos() % 1_000_000 {
        0 => format!("{}ms", d.as_millis()),
        _ => format!("{}s", d.as_secs_f64()),
    }
}

/// For clap: `#[arg(value_parser = crate::duration::parse_arg)]`.
pub fn parse_arg(text: &str) -> Result<Duration, String> {
    parse(text)
}

/// For serde: `#[serde(deserialize_with = "crate::duration::deserialize")]`.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// For serde: `#[serde(serialize_with = "crate::duration::serialize")]`.
pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("100s"), Ok(Duration::from_secs(100)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
    }

    #[test]
    fn refuses_bare_numbers_and_unknown_units() {
        assert!(parse("5").unwrap_err().contains("no unit"));
        assert!(parse("5d").unwrap_err().contains("unknown unit"));
        assert!(parse("s").unwrap_err().contains("number"));
        assert!(parse("-1s").is_err());
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::from_secs(5),
            Duration::from_millis(250),
            Duration::from_millis(1500),
        ] {
            assert_eq!(parse(&format(d)), Ok(d));
        }
    }
}
