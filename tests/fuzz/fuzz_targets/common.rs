//! Helpers the fuzz targets share (a module of each target, not a target itself).

/// Bytes as text, for assertion messages.
pub fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Index of the first occurrence of `needle` in `haystack`.
#[allow(dead_code)] // not every target searches
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A head's first line (CRLF included), after the empty lines that may come first.
#[allow(dead_code)] // not every target reads heads
pub fn first_line(head: &[u8]) -> &[u8] {
    let start = head
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(head.len());
    let line = &head[start..];
    let end = line
        .iter()
        .position(|&b| b == b'\n')
        .map_or(line.len(), |i| i + 1);
    &line[..end]
}
