//! Helpers shared by the HTTP unit tests.

/// Bytes as text, for assertion messages.
pub fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Where the head of `input` ends (the first blank line after any leading empty lines), as
/// the parsers should report it.
pub fn head_end(input: &[u8]) -> usize {
    let start = input
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap();
    start
        + input[start..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap()
        + 4
}
