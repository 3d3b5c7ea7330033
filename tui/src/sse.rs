//! Server-sent events parsing (the WHATWG `text/event-stream` format), pure
//! and incremental: feed it body chunks as they arrive, take whole events.
//!
//! Bounded: a line longer than [`MAX_LINE`] or an event whose data exceeds
//! [`MAX_EVENT`] is an error (the stream is then dropped and reconnected),
//! so a misbehaving server cannot grow the console's memory without limit.

/// Longest line accepted.
pub const MAX_LINE: usize = 8 << 20;
/// Largest event data accepted.
pub const MAX_EVENT: usize = 16 << 20;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `event:` field (`message` when absent).
    pub name: String,
    /// `data:` lines joined by `\n`.
    pub data: String,
}

/// The stream broke the format's limits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("event stream: {0}")]
pub struct SseError(&'static str);

/// Incremental parser.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    name: String,
    data: String,
    has_data: bool,
}

/// Fuzz target `sse_stream` (`proto/fuzz`), also run on its corpus by
/// `cargo test`: byte 0 is a chunk size, the rest a stream. Fed whole or in
/// chunks of that size, the parser must complete the same events (a chunk
/// boundary may fall anywhere: inside a line, between `\r` and `\n`, inside
/// a UTF-8 character), and never panic.
pub fn fuzz_target(data: &[u8]) {
    let Some((&size, stream)) = data.split_first() else {
        return;
    };
    let whole = Parser::new().feed(stream);
    let mut parser = Parser::new();
    let mut events = Vec::new();
    let mut failed = false;
    for chunk in stream.chunks(usize::from(size).max(1)) {
        match parser.feed(chunk) {
            Ok(e) => events.extend(e),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    if let Ok(whole) = whole {
        assert!(!failed, "chunked feeding failed where whole did not");
        assert_eq!(whole, events, "chunked feeding completed other events");
    }
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Feeds a chunk; returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SseError> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            let mut line = &self.buf[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            if let Some(ev) = self.line(&line)? {
                events.push(ev);
            }
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_LINE {
            return Err(SseError("line too long"));
        }
        Ok(events)
    }

    fn line(&mut self, line: &str) -> Result<Option<Event>, SseError> {
        if line.is_empty() {
            if !self.has_data {
                self.name.clear();
                return Ok(None);
            }
            let name = if self.name.is_empty() {
                "message".to_owned()
            } else {
                std::mem::take(&mut self.name)
            };
            self.has_data = false;
            return Ok(Some(Event {
                name,
                data: std::mem::take(&mut self.data),
            }));
        }
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.name = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
                if self.data.len() > MAX_EVENT {
                    return Err(SseError("event too large"));
                }
            }
            _ => {}
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks() {
        let mut p = Parser::new();
        assert!(p.feed(b"event: st").unwrap().is_empty());
        assert!(p.feed(b"ats\r\ndata: {\"a\":").unwrap().is_empty());
        let ev = p
            .feed(b"1}\r\n\r\n: keep-alive\n\ndata: x\ndata: y\n\n")
            .unwrap();
        assert_eq!(
            ev,
            vec![
                Event {
                    name: "stats".into(),
                    data: "{\"a\":1}".into()
                },
                Event {
                    name: "message".into(),
                    data: "x\ny".into()
                }
            ]
        );
    }

    #[test]
    fn unbounded_line_is_an_error() {
        let mut p = Parser::new();
        let big = vec![b'a'; MAX_LINE + 1];
        assert_eq!(p.feed(&big), Err(SseError("line too long")));
    }
}
