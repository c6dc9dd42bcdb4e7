//! A Server-Sent Events parser (the WHATWG `text/event-stream` format), fed with the chunks of
//! a response body as they arrive. Only what the SDK stream uses: `event`, `data` (several
//! lines joined with `\n`), `id`; comments (heartbeats) are reported so that a silent
//! connection can be told from an idle one.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    /// `message` when the server named none.
    pub name: String,
    pub data: String,
    pub id: Option<String>,
}

/// What a chunk of the stream held.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Item {
    Event(Event),
    /// A comment line, such as a heartbeat.
    Comment,
}

#[derive(Debug, Default)]
pub(crate) struct Parser {
    /// Bytes of an unfinished line.
    partial: Vec<u8>,
    name: Option<String>,
    data: Option<String>,
    id: Option<String>,
    after_cr: bool,
}

/// A line longer than this is not an SDK event; the parser refuses it rather than buffering
/// without bound.
const MAX_LINE: usize = 64 * 1024 * 1024;

/// The stream broke the format (or a limit): reconnect.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooLong;

impl Parser {
    /// Feeds a chunk and returns the items it completed.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Item>, TooLong> {
        let mut items = Vec::new();
        let mut rest = chunk;
        // The LF of a CRLF whose CR ended the previous chunk.
        if std::mem::take(&mut self.after_cr) && rest.first() == Some(&b'\n') {
            rest = &rest[1..];
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let line_end = end;
            let mut next = end + 1;
            // A CRLF pair is one line break; a lone CR is one too.
            if rest[end] == b'\r' {
                match rest.get(end + 1) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.partial.is_empty() {
                self.line(&rest[..line_end], &mut items);
            } else {
                self.partial.extend_from_slice(&rest[..line_end]);
                let line = std::mem::take(&mut self.partial);
                self.line(&line, &mut items);
            }
            rest = &rest[next..];
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() > MAX_LINE {
            return Err(TooLong);
        }
        Ok(items)
    }

    fn line(&mut self, line: &[u8], items: &mut Vec<Item>) {
        let line = String::from_utf8_lossy(line);
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                items.push(Item::Event(Event {
                    name: self.name.take().unwrap_or_else(|| "message".to_string()),
                    data,
                    id: self.id.clone(),
                }));
            }
            self.name = None;
            return;
        }
        if line.starts_with(':') {
            items.push(Item::Comment);
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match field {
            "event" => self.name = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(items: Vec<Item>) -> Vec<Event> {
        items
            .into_iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some(e),
                Item::Comment => None,
            })
            .collect()
    }

    #[test]
    fn parses_events_split_across_chunks() {
        let mut parser = Parser::default();
        let text = "event: config\nid: 7\ndata: {\"a\":\ndata: 1}\n\n:heartbeat\n\ndata: x\r\n\r\n";
        // Chunks of 3 split the CRLF pairs above between chunks.
        let mut all = Vec::new();
        for chunk in text.as_bytes().chunks(3) {
            all.extend(parser.feed(chunk).unwrap());
        }
        assert!(all.contains(&Item::Comment));
        let got = events(all);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].name, "config");
        assert_eq!(got[0].id.as_deref(), Some("7"));
        assert_eq!(got[0].data, "{\"a\":\n1}");
        // The id carries over to later events; the name does not.
        assert_eq!(got[1].name, "message");
        assert_eq!(got[1].id.as_deref(), Some("7"));
        assert_eq!(got[1].data, "x");
    }

    #[test]
    fn a_blank_line_without_data_dispatches_nothing() {
        let mut parser = Parser::default();
        assert!(events(parser.feed(b"event: patch\n\n").unwrap()).is_empty());
        let got = events(parser.feed(b"data: 1\n\n").unwrap());
        assert_eq!(got[0].name, "message");
    }

    #[test]
    fn a_crlf_split_between_chunks_is_one_line_break() {
        let mut parser = Parser::default();
        // Had the LF counted as a second line break, it would have ended the event early.
        let mut got = events(parser.feed(b"data: 1\r").unwrap());
        got.extend(events(parser.feed(b"\ndata: 2\r\n\r\n").unwrap()));
        let data: Vec<&str> = got.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, ["1\n2"]);
    }
}
