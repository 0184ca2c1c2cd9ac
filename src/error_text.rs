//! Errors as operators read them.

/// An error with its causes, each after a colon: transport errors (hyper's, tonic's) say only
/// "connection error" at the top and name what went wrong (refused, TLS, DNS) below.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
