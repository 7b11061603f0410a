//! Error messages with their causes. The clients this crate uses (tonic, reqwest, object_store)
//! keep the part an operator can act on (connection refused, certificate unknown, timed out) in
//! the sources of their errors, and often repeat a cause inside its parent's message; this is the
//! one place that walks the chain.

/// `e` and every source below it, joined by `: `, each cause once.
pub fn describe_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Layer(String, #[source] Option<Box<Layer>>);

    fn chain(parts: &[&str]) -> Layer {
        parts.iter().rev().fold(None, |inner, p| Some(Layer(p.to_string(), inner.map(Box::new)))).unwrap()
    }

    #[test]
    fn every_cause_once() {
        assert_eq!(describe_error(&chain(&["upload", "connect", "refused"])), "upload: connect: refused");
        // A cause already quoted by its parent is not repeated.
        assert_eq!(describe_error(&chain(&["request failed: refused", "refused"])), "request failed: refused");
        assert_eq!(describe_error(&chain(&["alone"])), "alone");
    }
}
