//! What the SQL stores share (process status and checkpoints; SQLite and PostgreSQL).

/// Whether `name` may be spliced into SQL as a table name: a plain identifier (a letter or
/// `_`, then letters, digits and `_`), at most 63 bytes (PostgreSQL's limit).
///
/// ```
/// use headwaters_ordering_core::sql::is_table_name;
/// assert!(is_table_name("event_streamex_process_status"));
/// assert!(!is_table_name("status; DROP TABLE users"));
/// ```
pub fn is_table_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
