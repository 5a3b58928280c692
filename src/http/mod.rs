//! HTTP/1.1 as pure code over byte slices: request and response heads, body framing, chunked
//! validation and the answers lb-mio gives itself. No sockets in here.

pub mod body;
pub mod chunked;
pub mod head;
pub mod path;
pub mod redirect;
pub mod reply;
pub mod request;
pub mod response;
pub mod rewrite;
#[cfg(test)]
mod testing;
