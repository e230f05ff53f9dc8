//! MQTT 5 enhanced authentication on the client side: the Authentication
//! Method and Data of CONNECT, and the AUTH exchange that follows it (and a
//! re-authentication, [`crate::Client::reauthenticate`]). [`Scram`] is
//! SCRAM-SHA-256; other methods implement [`EnhancedAuth`].

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use starling_scram::ClientExchange;

/// One authentication method's side of the exchange. An exchange is
/// `start`, any number of `step`s (one per AUTH 0x18 from the server), then
/// `finish` (the CONNACK's or the final AUTH's data).
pub trait EnhancedAuth: Send + Sync + fmt::Debug {
    /// The Authentication Method.
    fn method(&self) -> &str;
    /// A new exchange: the Authentication Data of the CONNECT (or of the
    /// AUTH 0x19 that re-authenticates).
    fn start(&self) -> Result<Option<Bytes>, String>;
    /// The server continues with `data`: the data to answer with.
    fn step(&self, data: Option<&[u8]>) -> Result<Option<Bytes>, String>;
    /// The server accepted with `data`: `Err` when the server could not
    /// prove itself (the connection is then not used).
    fn finish(&self, data: Option<&[u8]>) -> Result<(), String>;
}

/// SCRAM-SHA-256 with a user name and password. The password never crosses
/// the network; the server proves it knows the credential too.
pub struct Scram {
    user: String,
    password: String,
    exchange: Mutex<Option<ClientExchange>>,
}

impl fmt::Debug for Scram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scram")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Scram {
    /// SCRAM-SHA-256 as `user` with `password`, ready for
    /// [`crate::ConnectOptions::authentication`].
    pub fn new(user: &str, password: &str) -> Arc<Scram> {
        Arc::new(Scram {
            user: user.to_string(),
            password: password.to_string(),
            exchange: Mutex::new(None),
        })
    }
}

fn text(data: Option<&[u8]>) -> Result<&str, String> {
    data.and_then(|d| std::str::from_utf8(d).ok())
        .ok_or_else(|| "the server sent no SCRAM message".to_string())
}

impl EnhancedAuth for Scram {
    fn method(&self) -> &str {
        starling_scram::METHOD
    }

    fn start(&self) -> Result<Option<Bytes>, String> {
        let exchange = ClientExchange::new(&self.user, &self.password);
        let first = exchange.client_first();
        *self.exchange.lock() = Some(exchange);
        Ok(Some(Bytes::from(first)))
    }

    fn step(&self, data: Option<&[u8]>) -> Result<Option<Bytes>, String> {
        let mut guard = self.exchange.lock();
        let exchange = guard.as_mut().ok_or("no SCRAM exchange under way")?;
        let last = exchange
            .client_final(text(data)?)
            .map_err(|e| e.to_string())?;
        Ok(Some(Bytes::from(last)))
    }

    fn finish(&self, data: Option<&[u8]>) -> Result<(), String> {
        let exchange = self
            .exchange
            .lock()
            .take()
            .ok_or("no SCRAM exchange under way")?;
        exchange
            .verify_server(text(data)?)
            .map_err(|e| e.to_string())
    }
}
