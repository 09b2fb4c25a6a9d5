//! `coap://` and `coaps://` URIs and their decomposition into options (RFC 7252 §6).

use crate::message::Message;
use crate::option::OptionNumber;

/// Default port of `coap://` (RFC 7252 §6.1).
pub const COAP_PORT: u16 = 5683;
/// Default port of `coaps://` (RFC 7252 §6.2).
pub const COAPS_PORT: u16 = 5684;

/// A parsed CoAP URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoapUri {
    pub secure: bool,
    /// Host name or address literal (without the brackets of an IPv6 literal).
    pub host: String,
    pub port: u16,
    /// Percent-decoded path segments.
    pub path: Vec<String>,
    /// Percent-decoded query arguments.
    pub query: Vec<String>,
}

/// Why a string is not a CoAP URI.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("scheme must be coap:// or coaps://")]
    Scheme,
    #[error("missing host")]
    Host,
    #[error("invalid port")]
    Port,
    #[error("fragments are not allowed in CoAP URIs")]
    Fragment,
    #[error("invalid percent-encoding")]
    PercentEncoding,
}

impl CoapUri {
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let (secure, rest) = if let Some(rest) = uri.strip_prefix("coap://") {
            (false, rest)
        } else if let Some(rest) = uri.strip_prefix("coaps://") {
            (true, rest)
        } else {
            return Err(UriError::Scheme);
        };
        if rest.contains('#') {
            return Err(UriError::Fragment);
        }
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, rest) = rest.split_at(authority_end);
        let (host, port) = split_authority(authority)?;
        let port = match port {
            Some(port) => port.parse().map_err(|_| UriError::Port)?,
            None if secure => COAPS_PORT,
            None => COAP_PORT,
        };
        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rest, None),
        };
        let path = path
            .split('/')
            .skip(1)
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect::<Result<Vec<_>, _>>()?;
        let query = match query {
            Some(query) => query
                .split('&')
                .filter(|s| !s.is_empty())
                .map(percent_decode)
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(CoapUri {
            secure,
            host: host.to_owned(),
            port,
            path,
            query,
        })
    }

    /// Adds Uri-Path and Uri-Query options to `message`.
    pub fn apply(&self, message: &mut Message) {
        message.options.remove(OptionNumber::URI_PATH);
        message.options.remove(OptionNumber::URI_QUERY);
        for segment in &self.path {
            message
                .options
                .push(OptionNumber::URI_PATH, segment.as_bytes());
        }
        for argument in &self.query {
            message
                .options
                .push(OptionNumber::URI_QUERY, argument.as_bytes());
        }
    }
}

fn split_authority(authority: &str) -> Result<(&str, Option<&str>), UriError> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(UriError::Host)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(UriError::Port)?),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(UriError::Host);
    }
    Ok((host, port))
}

fn percent_decode(text: &str) -> Result<String, UriError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or(UriError::PercentEncoding)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UriError::PercentEncoding)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UriError::PercentEncoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc_7252_examples() {
        let uri = CoapUri::parse("coap://example.com:5683/~sensors/temp.xml").unwrap();
        assert_eq!(uri.host, "example.com");
        assert_eq!(uri.port, 5683);
        assert_eq!(uri.path, vec!["~sensors", "temp.xml"]);
        let uri = CoapUri::parse("coap://EXAMPLE.com/%7Esensors/temp.xml?a=1&b").unwrap();
        assert_eq!(uri.path, vec!["~sensors", "temp.xml"]);
        assert_eq!(uri.query, vec!["a=1", "b"]);
        let uri = CoapUri::parse("coaps://[::1]/").unwrap();
        assert_eq!(
            (uri.host.as_str(), uri.port, uri.secure),
            ("::1", COAPS_PORT, true)
        );
        assert!(uri.path.is_empty());
    }

    #[test]
    fn rejects_bad_uris() {
        assert_eq!(CoapUri::parse("http://x/"), Err(UriError::Scheme));
        assert_eq!(CoapUri::parse("coap:///a"), Err(UriError::Host));
        assert_eq!(CoapUri::parse("coap://a:99999/"), Err(UriError::Port));
        assert_eq!(CoapUri::parse("coap://a/b#c"), Err(UriError::Fragment));
        assert_eq!(
            CoapUri::parse("coap://a/%zz"),
            Err(UriError::PercentEncoding)
        );
        assert_eq!(
            CoapUri::parse("coap://a/%4"),
            Err(UriError::PercentEncoding)
        );
    }
}
