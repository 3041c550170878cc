//! A scraper's request head as the metrics endpoint receives it (DESIGN §9):
//! `metrics::http_request::parse_request` never panics on any bytes, a head it called
//! complete is not changed by bytes that arrive after it (the master parses what it has
//! received so far, again at each read), "too large" is only said of what passes a limit,
//! and every route has an answer whose Content-Length is its body's.
#![no_main]

use forkpool::metrics::http_request::{parse_request, response, route, HeadError, Route};
use libfuzzer_sys::fuzz_target;

/// The master's limit on a request head.
const MAX_HEAD: usize = 8 * 1024;

fuzz_target!(|data: &[u8]| {
    let whole = parse_request(data, MAX_HEAD);
    if let Err(HeadError::TooLarge) = &whole {
        // Either past the limit, or more headers than the parser takes (which needs at
        // least one byte a header).
        assert!(
            data.len() > MAX_HEAD || data.len() > 32,
            "too large at {} bytes",
            data.len()
        );
    }
    // The same bytes received in two reads: a head complete after the first read is the
    // head of the whole.
    let cut = data.len() / 2;
    if let Ok(Some(early)) = parse_request(&data[..cut], MAX_HEAD) {
        match &whole {
            Ok(Some(late)) => assert_eq!(&early, late, "more bytes changed a complete head"),
            other => panic!("complete after {cut} bytes, then {other:?}"),
        }
    }
    if let Ok(Some(request)) = whole {
        let (status, body) = match route(&request) {
            Route::Metrics => ("200 OK", "# metrics\n"),
            Route::Health => ("200 OK", "ok\n"),
            Route::NotFound => ("404 Not Found", "not found\n"),
            Route::MethodNotAllowed => ("405 Method Not Allowed", "only GET\n"),
        };
        let answer = response(status, "text/plain", body);
        let text = String::from_utf8(answer).expect("an answer is text");
        let (head, sent) = text.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head.contains(&format!("Content-Length: {}", sent.len())));
    }
});
