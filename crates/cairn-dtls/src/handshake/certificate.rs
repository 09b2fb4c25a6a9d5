//! The ECDHE-ECDSA handshake on secp256r1 (RFC 8422), with X.509 certificates (RFC 5246
//! §7.4.2) or raw public keys (RFC 7250), and mutual authentication by CertificateRequest and
//! CertificateVerify (RFC 5246 §7.4.4, §7.4.8).
//!
//! ```text
//! client                                         server
//! ClientHello (+cookie)            -->
//!                                        ServerHello
//!                                        Certificate
//!                                        ServerKeyExchange      (ECDHE point, ECDSA signature)
//!                                        CertificateRequest*
//!                                  <--   ServerHelloDone
//! Certificate*
//! ClientKeyExchange
//! CertificateVerify*
//! [CCS], Finished                  -->
//!                                  <--   [CCS], Finished
//! ```
//!
//! A server that requests a certificate requires one, and does not accept the client's
//! ChangeCipherSpec before a CertificateVerify that verifies over the transcript.

use rand_core::CryptoRng;
use sha2::{Digest, Sha256};

use super::{
    ClientExpectCertificate, ClientExpectEcdheServerHelloDone, ClientExpectServerHello,
    ClientExpectServerKeyExchange, ExpectChangeCipherSpec, Handshake, Progress, Secrets, ServerEnv,
    ServerExpectCertificate, ServerExpectCertificateVerify, ServerExpectClientKeyExchange, State,
};
use crate::Error;
use crate::crypto::{self, CipherSuite, EphemeralKey};
use crate::error::CertificateError;
use crate::message::{
    CERTIFICATE_TYPE_RAW_PUBLIC_KEY, CERTIFICATE_TYPE_X509, CertificateRequest, ClientHello,
    DigitallySigned, ECDSA_SECP256R1_SHA256, EcdheServerKeyExchange, GROUP_SECP256R1,
    HandshakeType, HelloExtensions, POINT_FORMAT_UNCOMPRESSED, ServerHello, encode_certificate,
    encode_ecdh_params, encode_ecdhe_client_key_exchange, parse_certificate,
    parse_ecdhe_client_key_exchange,
};
use crate::pki::{
    ClientCertificateConfig, MAX_CHAIN_LEN, PeerRole, PeerVerifier, ServerCertificateConfig,
    VerifiedPeer,
};

type Step = Result<(State, Progress), Error>;

/// The extensions a client adds to offer ECDHE-ECDSA (RFC 8422 §5.1, RFC 7250 §3).
pub(super) fn client_hello_extensions(
    suites: &[CipherSuite],
    config: Option<&ClientCertificateConfig>,
) -> HelloExtensions {
    let Some(config) = config.filter(|_| suites.iter().any(|suite| suite.is_ecdhe_ecdsa())) else {
        return HelloExtensions::default();
    };
    let server_auth = &config.server_auth;
    let server_certificate_type = match (
        server_auth.raw_public_keys.is_some(),
        server_auth.x509.is_some(),
    ) {
        (true, true) => Some(vec![CERTIFICATE_TYPE_RAW_PUBLIC_KEY, CERTIFICATE_TYPE_X509]),
        (true, false) => Some(vec![CERTIFICATE_TYPE_RAW_PUBLIC_KEY]),
        _ => None,
    };
    let client_certificate_type = config
        .credentials
        .as_ref()
        .filter(|credentials| credentials.chain.is_empty())
        .map(|_| vec![CERTIFICATE_TYPE_RAW_PUBLIC_KEY]);
    HelloExtensions {
        supported_groups: Some(vec![GROUP_SECP256R1]),
        ec_point_formats: Some(vec![POINT_FORMAT_UNCOMPRESSED]),
        signature_algorithms: Some(vec![ECDSA_SECP256R1_SHA256]),
        client_certificate_type,
        server_certificate_type,
        ..HelloExtensions::default()
    }
}

/// What a server can do in certificate mode for one ClientHello.
#[derive(Debug, Clone)]
pub(super) struct ServerOffer {
    server_raw_public_key: bool,
    client_raw_public_key: bool,
    echo_server_certificate_type: bool,
    echo_client_certificate_type: bool,
    echo_point_formats: bool,
}

impl ServerOffer {
    /// `None` when the client cannot do ECDHE-ECDSA with this server: no certificate mode
    /// configured, no ECDHE-ECDSA suite, no secp256r1, no ecdsa_secp256r1_sha256, or no
    /// certificate type in common.
    pub(super) fn negotiate(hello: &ClientHello, env: &ServerEnv<'_>) -> Option<Self> {
        let config = env.certificate.as_ref()?;
        let extensions = &hello.extensions;
        let offers_suite = hello
            .cipher_suites
            .iter()
            .any(|code| CipherSuite::from_code(*code).is_some_and(CipherSuite::is_ecdhe_ecdsa));
        let lacks = |list: &Option<Vec<u16>>, value: u16| {
            list.as_ref().is_some_and(|list| !list.contains(&value))
        };
        if !offers_suite
            || lacks(&extensions.supported_groups, GROUP_SECP256R1)
            || lacks(&extensions.signature_algorithms, ECDSA_SECP256R1_SHA256)
            || extensions
                .ec_point_formats
                .as_ref()
                .is_some_and(|formats| !formats.contains(&POINT_FORMAT_UNCOMPRESSED))
        {
            return None;
        }
        let has_chain = !config.credentials.chain.is_empty();
        let server_raw_public_key = match &extensions.server_certificate_type {
            None if has_chain => false,
            None => return None,
            Some(types) => {
                *types.iter().find(|kind| {
                    **kind == CERTIFICATE_TYPE_RAW_PUBLIC_KEY
                        || (**kind == CERTIFICATE_TYPE_X509 && has_chain)
                })? == CERTIFICATE_TYPE_RAW_PUBLIC_KEY
            }
        };
        let client_raw_public_key = match (&config.client_auth, &extensions.client_certificate_type)
        {
            (Some(verifier), Some(types)) => {
                *types.iter().find(|kind| {
                    (**kind == CERTIFICATE_TYPE_RAW_PUBLIC_KEY
                        && verifier.raw_public_keys.is_some())
                        || (**kind == CERTIFICATE_TYPE_X509 && verifier.x509.is_some())
                })? == CERTIFICATE_TYPE_RAW_PUBLIC_KEY
            }
            _ => false,
        };
        Some(Self {
            server_raw_public_key,
            client_raw_public_key,
            echo_server_certificate_type: extensions.server_certificate_type.is_some(),
            echo_client_certificate_type: extensions.client_certificate_type.is_some()
                && config.client_auth.is_some(),
            echo_point_formats: extensions.ec_point_formats.is_some(),
        })
    }

    /// The ServerHello's answers to the client's certificate-mode extensions.
    pub(super) fn server_hello_extensions(&self) -> HelloExtensions {
        let kind = |raw: bool| {
            vec![if raw {
                CERTIFICATE_TYPE_RAW_PUBLIC_KEY
            } else {
                CERTIFICATE_TYPE_X509
            }]
        };
        HelloExtensions {
            ec_point_formats: self
                .echo_point_formats
                .then(|| vec![POINT_FORMAT_UNCOMPRESSED]),
            server_certificate_type: self
                .echo_server_certificate_type
                .then(|| kind(self.server_raw_public_key)),
            client_certificate_type: self
                .echo_client_certificate_type
                .then(|| kind(self.client_raw_public_key)),
            ..HelloExtensions::default()
        }
    }
}

fn chain_limit(error: Error) -> Error {
    match error {
        Error::Limit { .. } => Error::Certificate(CertificateError::ChainTooLong),
        other => other,
    }
}

/// Authenticates a peer's Certificate message contents.
fn verify_peer(
    verifier: &PeerVerifier,
    certificates: &[Vec<u8>],
    raw_public_key: bool,
    role: PeerRole<'_>,
) -> Result<VerifiedPeer, Error> {
    let first = certificates
        .first()
        .ok_or(Error::Certificate(CertificateError::Missing))?;
    let verified = if raw_public_key {
        verifier.verify_raw_public_key(first)
    } else {
        let x509 = verifier
            .x509
            .as_ref()
            .ok_or(Error::Certificate(CertificateError::UnsupportedType))?;
        x509.verify(certificates, role)
    };
    verified.map_err(Error::Certificate)
}

impl Handshake {
    fn ecdh_params_digest(&self, params: &[u8]) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(self.client_random);
        hash.update(self.server_random);
        hash.update(params);
        hash.finalize().into()
    }

    /// Queues Certificate, ServerKeyExchange, CertificateRequest (for mutual authentication)
    /// and ServerHelloDone after the ServerHello.
    pub(super) fn server_ecdhe_flight(
        &mut self,
        rng: &mut dyn CryptoRng,
        offer: &ServerOffer,
        config: &ServerCertificateConfig,
        session_id: Vec<u8>,
    ) {
        let credentials = &config.credentials;
        let certificates = if offer.server_raw_public_key {
            vec![credentials.key.subject_public_key_info()]
        } else {
            credentials.chain.clone()
        };
        self.queue(
            HandshakeType::Certificate,
            encode_certificate(&certificates, offer.server_raw_public_key),
        );
        let ephemeral = EphemeralKey::generate(rng);
        let params = encode_ecdh_params(&ephemeral.public_point());
        let signature = credentials
            .key
            .sign_prehash(&self.ecdh_params_digest(&params));
        let server_key_exchange = EcdheServerKeyExchange {
            params,
            point: Vec::new(),
            signed: DigitallySigned {
                algorithm: ECDSA_SECP256R1_SHA256,
                signature,
            },
        };
        let mut body = Vec::new();
        server_key_exchange.encode(&mut body);
        self.queue(HandshakeType::ServerKeyExchange, body);
        self.state = match &config.client_auth {
            Some(verifier) => {
                let mut body = Vec::new();
                CertificateRequest::ecdsa().encode(&mut body);
                self.queue(HandshakeType::CertificateRequest, body);
                State::ServerExpectCertificate(ServerExpectCertificate {
                    session_id,
                    ephemeral,
                    verifier: verifier.clone(),
                    client_raw_public_key: offer.client_raw_public_key,
                })
            }
            None => State::ServerExpectClientKeyExchange(ServerExpectClientKeyExchange {
                session_id,
                ecdhe: Some((ephemeral, None)),
            }),
        };
        self.queue(HandshakeType::ServerHelloDone, Vec::new());
    }

    pub(super) fn server_certificate(
        &mut self,
        state: ServerExpectCertificate,
        body: &[u8],
    ) -> Step {
        let certificates = parse_certificate(body, state.client_raw_public_key, MAX_CHAIN_LEN)
            .map_err(chain_limit)?;
        let client = verify_peer(
            &state.verifier,
            &certificates,
            state.client_raw_public_key,
            PeerRole::Client,
        )?;
        let next = ServerExpectClientKeyExchange {
            session_id: state.session_id,
            ecdhe: Some((state.ephemeral, Some(client))),
        };
        Ok((
            State::ServerExpectClientKeyExchange(next),
            Progress::Continue,
        ))
    }

    pub(super) fn server_ecdhe_client_key_exchange(
        &mut self,
        state: ServerExpectClientKeyExchange,
        body: &[u8],
    ) -> Step {
        let (ephemeral, client) = state.ecdhe.ok_or(Error::Invalid {
            what: "ClientKeyExchange",
        })?;
        let point = parse_ecdhe_client_key_exchange(body)?;
        let premaster = ephemeral.agree(&point)?;
        let master = self.derive_master_from(&premaster);
        let keys = master.key_block(&self.client_random, &self.server_random);
        let pending_read = self.install_keys(&keys);
        let (identity, client_point) = match client {
            Some(client) => (client.identity, Some(client.public_point)),
            None => (Vec::new(), None),
        };
        let secrets = Secrets {
            master,
            identity,
            session_id: state.session_id,
            resumed: false,
            answer_with_finished: true,
        };
        let next = match client_point {
            Some(client_point) => {
                State::ServerExpectCertificateVerify(ServerExpectCertificateVerify {
                    secrets,
                    pending_read,
                    client_point,
                })
            }
            None => State::ExpectChangeCipherSpec(ExpectChangeCipherSpec {
                secrets,
                pending_read,
            }),
        };
        Ok((next, Progress::Continue))
    }

    pub(super) fn server_certificate_verify(
        &mut self,
        state: ServerExpectCertificateVerify,
        body: &[u8],
        hash_before: &[u8; 32],
    ) -> Step {
        let signed = DigitallySigned::parse_certificate_verify(body)?;
        if signed.algorithm != ECDSA_SECP256R1_SHA256 {
            return Err(Error::Invalid {
                what: "CertificateVerify algorithm",
            });
        }
        crypto::verify_p256_sha256_prehash(&state.client_point, hash_before, &signed.signature)?;
        let next = ExpectChangeCipherSpec {
            secrets: state.secrets,
            pending_read: state.pending_read,
        };
        Ok((State::ExpectChangeCipherSpec(next), Progress::Continue))
    }

    pub(super) fn client_ecdhe_server_hello(
        &mut self,
        state: ClientExpectServerHello,
        hello: &ServerHello,
    ) -> Step {
        let (Some(config), Some(ephemeral)) = (state.certificate, state.ephemeral) else {
            return Err(Error::Invalid {
                what: "ECDHE-ECDSA suite without a certificate configuration",
            });
        };
        let chosen = |answer: &Option<Vec<u8>>, offered: &Option<Vec<u8>>| match answer {
            None => Ok(false),
            Some(answer) => match (answer.first(), offered) {
                (Some(kind), Some(offered)) if offered.contains(kind) => {
                    Ok(*kind == CERTIFICATE_TYPE_RAW_PUBLIC_KEY)
                }
                _ => Err(Error::Certificate(CertificateError::UnsupportedType)),
            },
        };
        let offered = &state.hello.extensions;
        let server_raw_public_key = chosen(
            &hello.extensions.server_certificate_type,
            &offered.server_certificate_type,
        )?;
        let client_raw_public_key = chosen(
            &hello.extensions.client_certificate_type,
            &offered.client_certificate_type,
        )?;
        let next = ClientExpectCertificate {
            session_id: hello.session_id.clone(),
            config,
            ephemeral,
            server_raw_public_key,
            client_raw_public_key,
        };
        Ok((State::ClientExpectCertificate(next), Progress::Continue))
    }

    pub(super) fn client_certificate(
        &mut self,
        state: ClientExpectCertificate,
        body: &[u8],
    ) -> Step {
        let certificates = parse_certificate(body, state.server_raw_public_key, MAX_CHAIN_LEN)
            .map_err(chain_limit)?;
        let role = PeerRole::Server(state.config.server_name.as_deref());
        let server = verify_peer(
            &state.config.server_auth,
            &certificates,
            state.server_raw_public_key,
            role,
        )?;
        let next = ClientExpectServerKeyExchange {
            session_id: state.session_id,
            config: state.config,
            ephemeral: state.ephemeral,
            client_raw_public_key: state.client_raw_public_key,
            server,
        };
        Ok((
            State::ClientExpectServerKeyExchange(next),
            Progress::Continue,
        ))
    }

    pub(super) fn client_ecdhe_server_key_exchange(
        &mut self,
        state: ClientExpectServerKeyExchange,
        body: &[u8],
    ) -> Step {
        let exchange = EcdheServerKeyExchange::parse(body)?;
        if exchange.signed.algorithm != ECDSA_SECP256R1_SHA256 {
            return Err(Error::Invalid {
                what: "ServerKeyExchange algorithm",
            });
        }
        let digest = self.ecdh_params_digest(&exchange.params);
        crypto::verify_p256_sha256_prehash(
            &state.server.public_point,
            &digest,
            &exchange.signed.signature,
        )?;
        crypto::parse_p256_point(&exchange.point)?;
        let next = ClientExpectEcdheServerHelloDone {
            session_id: state.session_id,
            config: state.config,
            ephemeral: state.ephemeral,
            client_raw_public_key: state.client_raw_public_key,
            server: state.server,
            server_point: exchange.point,
            certificate_requested: false,
        };
        Ok((
            State::ClientExpectEcdheServerHelloDone(next),
            Progress::Continue,
        ))
    }

    pub(super) fn client_certificate_request(
        &mut self,
        mut state: ClientExpectEcdheServerHelloDone,
        body: &[u8],
    ) -> Step {
        CertificateRequest::parse(body)?;
        if state.certificate_requested {
            return Err(Error::UnexpectedMessage {
                what: "CertificateRequest",
                state: "ClientExpectEcdheServerHelloDone",
            });
        }
        state.certificate_requested = true;
        Ok((
            State::ClientExpectEcdheServerHelloDone(state),
            Progress::Continue,
        ))
    }

    pub(super) fn client_ecdhe_server_hello_done(
        &mut self,
        now: core::time::Duration,
        state: ClientExpectEcdheServerHelloDone,
        body: &[u8],
    ) -> Step {
        if !body.is_empty() {
            return Err(Error::Invalid {
                what: "ServerHelloDone length",
            });
        }
        let credentials = state
            .config
            .credentials
            .as_ref()
            .filter(|_| state.certificate_requested);
        if state.certificate_requested {
            let certificates = match credentials {
                Some(credentials) if state.client_raw_public_key => {
                    vec![credentials.key.subject_public_key_info()]
                }
                Some(credentials) => credentials.chain.clone(),
                None => Vec::new(),
            };
            self.queue(
                HandshakeType::Certificate,
                encode_certificate(&certificates, state.client_raw_public_key),
            );
        }
        self.queue(
            HandshakeType::ClientKeyExchange,
            encode_ecdhe_client_key_exchange(&state.ephemeral.public_point()),
        );
        let premaster = state.ephemeral.agree(&state.server_point)?;
        let master = self.derive_master_from(&premaster);
        if let Some(credentials) = credentials {
            let signed = DigitallySigned {
                algorithm: ECDSA_SECP256R1_SHA256,
                signature: credentials.key.sign_prehash(&self.transcript_hash()),
            };
            let mut body = Vec::new();
            signed.encode(&mut body);
            self.queue(HandshakeType::CertificateVerify, body);
        }
        let keys = master.key_block(&self.client_random, &self.server_random);
        let pending_read = self.install_keys(&keys);
        self.queue_change_cipher_spec_and_finished(&master);
        self.flush(now)?;
        let next = ExpectChangeCipherSpec {
            secrets: Secrets {
                master,
                identity: state.server.identity,
                session_id: state.session_id,
                resumed: false,
                answer_with_finished: false,
            },
            pending_read,
        };
        Ok((State::ExpectChangeCipherSpec(next), Progress::Continue))
    }
}
