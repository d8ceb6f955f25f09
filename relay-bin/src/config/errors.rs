//! Configuration errors that name the key and its line, and the helpers
//! that find them in the text.

/// A configuration error: which key, on which line, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File name (or `<embedded>`).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key, e.g. `relay.port_min`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.key.is_empty()) {
            (Some(l), false) => write!(f, "{}:{}: {}: {}", self.file, l, self.key, self.message),
            (None, false) => write!(f, "{}: {}: {}", self.file, self.key, self.message),
            (_, true) => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// A serde/toml message in an operator's words: "expected u16" becomes
/// "expected a whole number from 0 to 65535", and so on.
fn humanize(message: &str) -> String {
    const TYPES: [(&str, &str); 10] = [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u32", "expected a whole number from 0 to 4294967295"),
        ("expected u64", "expected a whole number from 0 to 18446744073709551615"),
        ("expected usize", "expected a whole number (0 or more)"),
        ("expected i64", "expected a whole number"),
        ("expected a boolean", "expected true or false"),
        ("expected IP address", "expected an IP address such as 192.0.2.10 or 2001:db8::10"),
        ("expected socket address", "expected an address and port such as 127.0.0.1:9180 or [::1]:9180"),
        ("expected a string", "expected a quoted string"),
    ];
    let mut out = message.to_string();
    for (from, to) in TYPES {
        out = out.replace(from, to);
    }
    out
}

impl std::error::Error for ConfigError {}

/// The largest char boundary at or before `offset`.
fn boundary(text: &str, offset: usize) -> usize {
    let mut o = offset.min(text.len());
    while !text.is_char_boundary(o) {
        o -= 1;
    }
    o
}

/// 1-based line of a byte offset.
fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..boundary(text, offset)].bytes().filter(|b| *b == b'\n').count() + 1
}

/// A TOML syntax or type error as a [`ConfigError`]: the key (for a
/// missing field, the field inside the table the error points at) and line.
pub(crate) fn toml_error(name: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let message = humanize(e.message().trim());
    let offset = e.span().map(|s| s.start);
    let missing = message.strip_prefix("missing field `").and_then(|m| m.split('`').next());
    let key = match (missing, offset) {
        (Some(field), Some(o)) => match section_at(text, o) {
            s if s.is_empty() => field.to_string(),
            s => format!("{s}.{field}"),
        },
        (Some(field), None) => field.to_string(),
        (None, o) => key_at(text, o),
    };
    ConfigError { file: name.into(), line: offset.map(|o| line_of_offset(text, o)), key, message }
}

/// The `[section]` (or `[[array]]`) header in force at `offset`.
fn section_at(text: &str, offset: usize) -> String {
    let mut section = String::new();
    for line in text[..boundary(text, offset)].lines() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
    }
    section
}

/// The dotted key at a byte offset (section header before it + key on its line).
fn key_at(text: &str, offset: Option<usize>) -> String {
    let Some(offset) = offset else { return "-".into() };
    let offset = boundary(text, offset);
    let section = section_at(text, offset);
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim();
    let key = match (section.is_empty(), key.is_empty() || key.starts_with('[')) {
        (_, true) if !section.is_empty() => section,
        (true, _) => key.to_string(),
        _ => format!("{section}.{key}"),
    };
    if key.is_empty() {
        "-".into()
    } else {
        key
    }
}

/// The line where `key` is set inside `[section]`, if it is written.
pub(crate) fn find_key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            current = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            if current == format!("{section}.{key}") || (section.is_empty() && current == key) {
                return Some(i + 1);
            }
            continue;
        }
        if current == section && t.split('=').next().map(str::trim) == Some(key) {
            return Some(i + 1);
        }
    }
    None
}
