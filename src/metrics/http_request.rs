//! A scraper's HTTP request head, read with `httparse`: what the master's metrics endpoint
//! needs from it (method and path) or why it cannot answer. A pure function of the bytes
//! received so far, so it is unit-tested without a socket and a fuzz target can call it.

/// Headers a request may carry. Prometheus sends about five; curl three.
const MAX_HEADERS: usize = 32;

/// What a complete request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct ScrapeRequest<'a> {
    /// `GET`, `POST`, ... as sent.
    pub method: &'a str,
    /// The path without its query string (`/metrics?x=1` is `/metrics`).
    pub path: &'a str,
}

/// Why a request head cannot be answered normally.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Longer than the limit, or more than [`MAX_HEADERS`] headers: answered 431.
    TooLarge,
    /// Not HTTP/1.x: answered 400 with the parser's reason.
    Malformed(String),
}

/// Reads the request head at the start of `received`: `Ok(None)` while it is incomplete
/// and within `max_head` bytes, the request once its blank line has arrived.
pub fn parse_request(
    received: &[u8],
    max_head: usize,
) -> Result<Option<ScrapeRequest<'_>>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(received) {
        Ok(httparse::Status::Complete(length)) if length > max_head => Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(_)) => {
            let method = request.method.unwrap_or_default();
            let target = request.path.unwrap_or_default();
            let path = target.split_once('?').map_or(target, |(path, _)| path);
            Ok(Some(ScrapeRequest { method, path }))
        }
        Ok(httparse::Status::Partial) if received.len() > max_head => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// What the endpoint answers to a request.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Route {
    /// `GET /metrics`: the exposition text.
    Metrics,
    /// `GET /healthz`: 200 while serving, 503 while stopping.
    Health,
    /// Any other path: 404.
    NotFound,
    /// A known path with another method than GET: 405.
    MethodNotAllowed,
}

/// Where a request goes: only `GET` of the two known paths is served.
pub fn route(request: &ScrapeRequest<'_>) -> Route {
    let known = match request.path {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Health,
        _ => return Route::NotFound,
    };
    if request.method == "GET" {
        known
    } else {
        Route::MethodNotAllowed
    }
}

/// A whole HTTP/1.1 answer that closes the connection: one request per connection keeps
/// the endpoint's state to one buffer each way.
pub fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    let allow = if status.starts_with("405") {
        "Allow: GET\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {allow}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_get_gives_method_and_path_without_query() {
        let head = b"GET /metrics?name[]=x HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n";
        let request = parse_request(head, 8192).unwrap().unwrap();
        assert_eq!(
            request,
            ScrapeRequest {
                method: "GET",
                path: "/metrics"
            }
        );
        assert_eq!(route(&request), Route::Metrics);
    }

    #[test]
    fn an_incomplete_head_waits_for_more() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost:", 8192),
            Ok(None)
        );
        assert_eq!(parse_request(b"", 8192), Ok(None));
    }

    #[test]
    fn a_head_past_the_limit_is_too_large_complete_or_not() {
        let long = format!("GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n", "a".repeat(100));
        assert_eq!(parse_request(long.as_bytes(), 64), Err(HeadError::TooLarge));
        let complete = format!("{long}\r\n");
        assert_eq!(
            parse_request(complete.as_bytes(), 64),
            Err(HeadError::TooLarge)
        );
        let many: String = (0..40).map(|i| format!("X-{i}: 1\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse_request(head.as_bytes(), 8192),
            Err(HeadError::TooLarge)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            parse_request(b"\x16\x03\x01 hello\r\n\r\n", 8192),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn routes_by_path_then_method() {
        let request = |method, path| ScrapeRequest { method, path };
        assert_eq!(route(&request("GET", "/healthz")), Route::Health);
        assert_eq!(route(&request("POST", "/metrics")), Route::MethodNotAllowed);
        assert_eq!(route(&request("GET", "/")), Route::NotFound);
        assert_eq!(route(&request("DELETE", "/nope")), Route::NotFound);
    }

    #[test]
    fn a_response_carries_its_length_and_closes() {
        let text =
            String::from_utf8(response("405 Method Not Allowed", "text/plain", "no\n")).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Length: 3\r\n"), "{text}");
        assert!(text.contains("Allow: GET\r\n"), "{text}");
        assert!(text.ends_with("Connection: close\r\n\r\nno\n"), "{text}");
    }
}
