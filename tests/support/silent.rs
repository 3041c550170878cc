//! A TCP server that accepts connections and never says a word: what a client sees when a
//! server (or a firewall in between) hangs after the handshake.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Listens on 127.0.0.1 at [`SilentListener::port`]. Dropping it closes the listener and
/// every accepted socket, so clients then see the connection close.
pub struct SilentListener {
    port: u16,
    closing: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

pub fn silent_listener() -> SilentListener {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a silent listener");
    let port = listener
        .local_addr()
        .expect("silent listener address")
        .port();
    let closing = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let acceptor = {
        let closing = Arc::clone(&closing);
        let accepted = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if closing.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    // Kept open and never read: the client waits for an answer forever.
                    accepted.lock().unwrap().push(stream);
                }
            }
        })
    };
    SilentListener {
        port,
        closing,
        accepted,
        acceptor: Some(acceptor),
    }
}

impl SilentListener {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for SilentListener {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        // accept() only returns for a connection: make one so the thread sees `closing`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.accepted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }
}
