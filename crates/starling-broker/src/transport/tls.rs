//! TLS for `mqtts://`, `wss://` and `quic://` listeners, through rustls with the
//! ring provider.
//!
//! - TLS 1.2 and 1.3 only (QUIC: 1.3 only), rustls' default (modern) suites.
//! - Certificate chain and private key from PEM files; with a CA file, client
//!   certificates are verified against it, and required with `require-client-cert`.
//! - [`Reloadable`] holds the configuration in force; a reload builds a new one
//!   from the files and swaps it in. Handshakes already done keep their session,
//!   so reloading drops no connection.
//! - [`identity`] reads the CN (else the first SAN) of a client certificate, for
//!   `use-identity-as-username`.
//!
//! Errors name the files, never their contents.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

/// Where a listener's certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that client certificates are verified against.
    pub ca: Option<PathBuf>,
    /// Refuse clients without a valid certificate.
    pub require_client_cert: bool,
    /// Build a configuration for QUIC (TLS 1.3 only, ALPN `mqtt`).
    pub quic: bool,
}

/// The ALPN protocol of MQTT over QUIC.
pub(crate) const ALPN_MQTT: &[u8] = b"mqtt";

/// Builds a rustls server configuration from the files of `s`.
pub(crate) fn server_config(s: &TlsSettings) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if s.quic {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12, &rustls::version::TLS13]
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let builder = match &s.ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = read_certs(ca)?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("CA file {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if s.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("CA file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None if s.require_client_cert => {
            return Err("require-client-cert needs a CA file (tls-ca)".to_string())
        }
        None => builder.with_no_client_auth(),
    };
    let certs = read_certs(&s.cert)?;
    let key = PrivateKeyDer::from_pem_file(&s.key)
        .map_err(|e| format!("key file {}: {}", s.key.display(), pem_error(&e)))?;
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "certificate {} and key {}: {e}",
            s.cert.display(),
            s.key.display()
        )
    })?;
    if s.quic {
        config.alpn_protocols = vec![ALPN_MQTT.to_vec()];
    }
    Ok(Arc::new(config))
}

/// A PEM error as text. Only the kind of error: never file contents.
fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no PEM item of the expected kind found".to_string(),
        _ => "malformed PEM".to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("certificate file {}: {}", path.display(), pem_error(&e)))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// A listener's TLS configuration, swapped on reload.
#[derive(Debug)]
pub(crate) struct Reloadable {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
}

impl Reloadable {
    /// Loads the files of `settings`.
    pub(crate) fn load(settings: TlsSettings) -> Result<Reloadable, String> {
        let config = server_config(&settings)?;
        Ok(Reloadable {
            settings,
            current: RwLock::new(config),
        })
    }

    /// The settings it was loaded from.
    pub(crate) fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// The configuration for new handshakes.
    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        self.current.read().clone()
    }

    /// Installs a configuration built by [`server_config`].
    pub(crate) fn install(&self, config: Arc<ServerConfig>) {
        *self.current.write() = config;
    }
}

/// Runs the server side of a TLS handshake over `io`. Returns the stream and the
/// client certificate's identity, if the client presented a certificate.
pub(crate) async fn accept<IO>(
    config: Arc<ServerConfig>,
    io: IO,
) -> std::io::Result<(TlsStream<IO>, Option<String>)>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let stream = tokio_rustls::TlsAcceptor::from(config).accept(io).await?;
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(identity);
    Ok((stream, identity))
}

/// The identity of a certificate: the subject's first common name, else its
/// first subject alternative name (DNS name, e-mail, URI or IP address).
pub(crate) fn identity(cert: &CertificateDer<'_>) -> Option<String> {
    der::identity(cert.as_ref())
}

/// Just enough DER to find a certificate's subject CN and SAN extension. The
/// certificate has been verified by rustls before this runs; malformed input
/// yields `None`, never a panic.
mod der {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const OCTET_STRING: u8 = 0x04;
    const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
    const OID_SAN: &[u8] = &[0x55, 0x1D, 0x11];

    /// Splits one TLV off `input`: (tag, contents, rest).
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let tag = *input.first()?;
        if tag & 0x1F == 0x1F {
            return None; // high tag numbers never occur where we look
        }
        let first = *input.get(1)?;
        let (len, header) = if first < 0x80 {
            (first as usize, 2)
        } else {
            let n = (first & 0x7F) as usize;
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for b in input.get(2..2 + n)? {
                len = (len << 8) | *b as usize;
            }
            (len, 2 + n)
        };
        let end = header.checked_add(len)?;
        Some((tag, input.get(header..end)?, input.get(end..)?))
    }

    fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (t, contents, rest) = tlv(input)?;
        (t == tag).then_some((contents, rest))
    }

    pub(super) fn identity(cert: &[u8]) -> Option<String> {
        let (certificate, _) = expect(cert, SEQUENCE)?;
        let (mut tbs, _) = expect(certificate, SEQUENCE)?;
        // version [0] EXPLICIT, optional
        if tbs.first() == Some(&0xA0) {
            tbs = tlv(tbs)?.2;
        }
        let (_serial, rest) = expect(tbs, 0x02)?;
        let (_sig_alg, rest) = expect(rest, SEQUENCE)?;
        let (_issuer, rest) = expect(rest, SEQUENCE)?;
        let (_validity, rest) = expect(rest, SEQUENCE)?;
        let (subject, rest) = expect(rest, SEQUENCE)?;
        if let Some(cn) = common_name(subject) {
            return Some(cn);
        }
        let (_spki, mut rest) = expect(rest, SEQUENCE)?;
        while let Some((tag, contents, next)) = tlv(rest) {
            if tag == 0xA3 {
                return first_san(contents);
            }
            rest = next;
        }
        None
    }

    fn common_name(mut name: &[u8]) -> Option<String> {
        while let Some((contents, rest)) = expect(name, SET) {
            let mut set = contents;
            while let Some((atv, next)) = expect(set, SEQUENCE) {
                if let Some((oid, value)) = expect(atv, OID) {
                    if oid == OID_CN {
                        let (tag, s, _) = tlv(value)?;
                        return string(tag, s).filter(|s| !s.is_empty());
                    }
                }
                set = next;
            }
            name = rest;
        }
        None
    }

    fn string(tag: u8, bytes: &[u8]) -> Option<String> {
        match tag {
            // UTF8String, PrintableString, IA5String, VisibleString
            0x0C | 0x13 | 0x16 | 0x1A => String::from_utf8(bytes.to_vec()).ok(),
            // TeletexString: read as Latin-1
            0x14 => Some(bytes.iter().map(|b| *b as char).collect()),
            // BMPString: UTF-16BE
            0x1E => {
                let units: Vec<u16> = bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                String::from_utf16(&units).ok()
            }
            _ => None,
        }
    }

    fn first_san(explicit: &[u8]) -> Option<String> {
        let (mut exts, _) = expect(explicit, SEQUENCE)?;
        while let Some((ext, next)) = expect(exts, SEQUENCE) {
            let (oid, mut rest) = expect(ext, OID)?;
            if oid == OID_SAN {
                if rest.first() == Some(&0x01) {
                    rest = tlv(rest)?.2; // critical flag
                }
                let (value, _) = expect(rest, OCTET_STRING)?;
                let (mut names, _) = expect(value, SEQUENCE)?;
                while let Some((tag, contents, next)) = tlv(names) {
                    let name = match tag {
                        // rfc822Name, dNSName, uniformResourceIdentifier
                        0x81 | 0x82 | 0x86 => String::from_utf8(contents.to_vec()).ok(),
                        // iPAddress
                        0x87 => match contents.len() {
                            4 => Some(
                                std::net::Ipv4Addr::from(<[u8; 4]>::try_from(contents).ok()?)
                                    .to_string(),
                            ),
                            16 => Some(
                                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(contents).ok()?)
                                    .to_string(),
                            ),
                            _ => None,
                        },
                        _ => None,
                    };
                    if let Some(name) = name.filter(|n| !n.is_empty()) {
                        return Some(name);
                    }
                    names = next;
                }
                return None;
            }
            exts = next;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(cn: Option<&str>, sans: Vec<rcgen::SanType>) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Starling");
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn identity_is_the_cn_then_the_first_san() {
        let dns = |s: &str| rcgen::SanType::DnsName(s.try_into().unwrap());
        let cert = cert_with(Some("device-7"), vec![dns("other.example")]);
        assert_eq!(identity(&cert).as_deref(), Some("device-7"));
        let cert = cert_with(None, vec![dns("sensor.example"), dns("x.example")]);
        assert_eq!(identity(&cert).as_deref(), Some("sensor.example"));
        let cert = cert_with(
            None,
            vec![rcgen::SanType::IpAddress("10.0.0.9".parse().unwrap())],
        );
        assert_eq!(identity(&cert).as_deref(), Some("10.0.0.9"));
        let cert = cert_with(None, vec![]);
        assert_eq!(identity(&cert), None);
    }

    #[test]
    fn malformed_der_is_no_identity() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF],
            &[0x30, 0x02, 0x30],
        ] {
            assert_eq!(identity(&CertificateDer::from(bad.to_vec())), None);
        }
    }
}
