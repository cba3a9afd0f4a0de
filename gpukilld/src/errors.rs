//! Error helpers every layer may use. A leaf: it imports nothing of the crate.

/// An error and its sources on one line ("cannot open the store x: unable to open ...").
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
