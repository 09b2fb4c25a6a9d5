//! The DTLS 1.2 record layer (RFC 6347 §4.1) with connection IDs (RFC 9146 §4–5).
//!
//! - Record header: type, version, 16-bit epoch, 48-bit sequence number, length (§4.1).
//! - Several records per datagram (§4.1.1); a malformed record ends the parse of its datagram.
//! - AEAD protection with the explicit nonce and additional data of RFC 5246 §6.2.3.3, or the
//!   `tls12_cid` additional data and `DTLSInnerPlaintext` of RFC 9146 §5.
//! - The sliding anti-replay window of §4.1.2.6 (64 records).
//!
//! Parsing never panics and only borrows the datagram.

use crate::Error;
use crate::codec::{Reader, put_u48};
use crate::crypto::{CipherSuite, EXPLICIT_NONCE_LEN, TrafficKey};

/// DTLS 1.2 on the wire.
pub const DTLS_1_2: u16 = 0xFEFD;
/// DTLS 1.0 on the wire (used in the HelloVerifyRequest, RFC 6347 §4.2.1).
pub const DTLS_1_0: u16 = 0xFEFF;
/// Length of a record header without a connection ID.
pub const HEADER_LEN: usize = 13;
/// Largest plaintext in one record (RFC 5246 §6.2.1).
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// Largest protected fragment accepted (RFC 5246 §6.2.3).
pub const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 2048;
/// Largest sequence number (RFC 6347 §4.1).
pub const MAX_SEQUENCE: u64 = (1 << 48) - 1;
/// Largest connection ID (RFC 9146 §3).
pub const MAX_CID_LEN: usize = 255;

/// Record content type (RFC 5246 §6.2.1, RFC 9146 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// change_cipher_spec (20).
    ChangeCipherSpec,
    /// alert (21).
    Alert,
    /// handshake (22).
    Handshake,
    /// application_data (23).
    ApplicationData,
    /// tls12_cid (25), RFC 9146.
    Tls12Cid,
    /// Anything else.
    Unknown(u8),
}

impl ContentType {
    /// Decodes the type byte.
    pub fn from_u8(value: u8) -> Self {
        match value {
            20 => Self::ChangeCipherSpec,
            21 => Self::Alert,
            22 => Self::Handshake,
            23 => Self::ApplicationData,
            25 => Self::Tls12Cid,
            other => Self::Unknown(other),
        }
    }

    /// Encodes the type byte.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::ChangeCipherSpec => 20,
            Self::Alert => 21,
            Self::Handshake => 22,
            Self::ApplicationData => 23,
            Self::Tls12Cid => 25,
            Self::Unknown(other) => other,
        }
    }
}

/// A record as found in a datagram, borrowing its fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// The outer content type.
    pub content_type: ContentType,
    /// The protocol version field.
    pub version: u16,
    /// The epoch.
    pub epoch: u16,
    /// The 48-bit sequence number.
    pub sequence: u64,
    /// The connection ID (empty unless the type is `tls12_cid`).
    pub cid: &'a [u8],
    /// The fragment (protected or not).
    pub fragment: &'a [u8],
}

impl<'a> Record<'a> {
    /// Reads one record; `cid_len` is the length of the connection IDs this side issued, used
    /// only for `tls12_cid` records.
    pub fn parse(reader: &mut Reader<'a>, cid_len: usize) -> Result<Self, Error> {
        let content_type = ContentType::from_u8(reader.u8("record header")?);
        let version = reader.u16("record header")?;
        let epoch = reader.u16("record header")?;
        let sequence = reader.u48("record header")?;
        let cid = if content_type == ContentType::Tls12Cid {
            reader.take(cid_len, "record connection ID")?
        } else {
            &[]
        };
        let fragment = reader.vec16("record fragment")?;
        if fragment.len() > MAX_CIPHERTEXT {
            return Err(Error::RecordOverflow);
        }
        Ok(Self {
            content_type,
            version,
            epoch,
            sequence,
            cid,
            fragment,
        })
    }

    /// Peeks at the connection ID of the first record of a datagram, if it is a `tls12_cid`
    /// record long enough to carry one of `cid_len` bytes.
    pub fn peek_cid(datagram: &'a [u8], cid_len: usize) -> Option<&'a [u8]> {
        let mut reader = Reader::new(datagram);
        if ContentType::from_u8(reader.u8("type").ok()?) != ContentType::Tls12Cid {
            return None;
        }
        reader.take(10, "header").ok()?;
        reader.take(cid_len, "cid").ok()
    }
}

/// Iterates over the records of a datagram; stops at the first malformed one (RFC 6347 §4.1.2.7:
/// invalid records are discarded).
pub struct Records<'a> {
    reader: Reader<'a>,
    cid_len: usize,
}

impl<'a> Records<'a> {
    /// Records of `datagram`.
    pub fn new(datagram: &'a [u8], cid_len: usize) -> Self {
        Self {
            reader: Reader::new(datagram),
            cid_len,
        }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        if self.reader.is_empty() {
            return None;
        }
        match Record::parse(&mut self.reader, self.cid_len) {
            Ok(record) => Some(record),
            Err(_) => {
                self.reader.rest();
                None
            }
        }
    }
}

fn header(out: &mut Vec<u8>, content_type: ContentType, version: u16, epoch: u16, seq: u64) {
    out.push(content_type.to_u8());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&epoch.to_be_bytes());
    put_u48(out, seq);
}

/// Appends an unprotected (epoch 0) record.
pub fn write_plaintext(
    out: &mut Vec<u8>,
    content_type: ContentType,
    version: u16,
    sequence: u64,
    fragment: &[u8],
) {
    header(out, content_type, version, 0, sequence);
    out.extend_from_slice(
        &u16::try_from(fragment.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(fragment);
}

fn explicit_nonce(epoch: u16, sequence: u64) -> [u8; EXPLICIT_NONCE_LEN] {
    let combined = (u64::from(epoch) << 48) | (sequence & MAX_SEQUENCE);
    combined.to_be_bytes()
}

fn classic_aad(epoch: u16, sequence: u64, content_type: ContentType, len: usize) -> Vec<u8> {
    let mut aad = Vec::with_capacity(13);
    aad.extend_from_slice(&explicit_nonce(epoch, sequence));
    aad.push(content_type.to_u8());
    aad.extend_from_slice(&DTLS_1_2.to_be_bytes());
    aad.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    aad
}

fn cid_aad(epoch: u16, sequence: u64, cid: &[u8], inner_len: usize) -> Vec<u8> {
    let cid_type = ContentType::Tls12Cid.to_u8();
    let mut aad = Vec::with_capacity(23 + cid.len());
    aad.extend_from_slice(&[0xFF; 8]);
    aad.push(cid_type);
    aad.push(u8::try_from(cid.len()).unwrap_or(u8::MAX));
    aad.push(cid_type);
    aad.extend_from_slice(&DTLS_1_2.to_be_bytes());
    aad.extend_from_slice(&epoch.to_be_bytes());
    put_u48(&mut aad, sequence);
    aad.extend_from_slice(cid);
    aad.extend_from_slice(&u16::try_from(inner_len).unwrap_or(u16::MAX).to_be_bytes());
    aad
}

/// The protection state of one direction of an epoch > 0.
#[derive(Debug, Clone)]
pub struct Protection {
    /// The negotiated suite.
    pub suite: CipherSuite,
    /// The key of this direction.
    pub key: TrafficKey,
}

impl Protection {
    /// Appends a protected record. With a non-empty `cid`, the record is a `tls12_cid` record
    /// (RFC 9146 §4) carrying `content_type` inside.
    pub fn write(
        &self,
        out: &mut Vec<u8>,
        content_type: ContentType,
        epoch: u16,
        sequence: u64,
        cid: &[u8],
        plaintext: &[u8],
    ) -> Result<(), Error> {
        write_protected(
            self.suite,
            &self.key,
            out,
            content_type,
            epoch,
            sequence,
            cid,
            plaintext,
        )
    }

    /// Opens a protected record and returns its real content type and plaintext. Any failure is
    /// [`Error::BadRecordMac`] or a decode error; the caller drops the record silently.
    pub fn open(&self, record: &Record<'_>) -> Result<(ContentType, Vec<u8>), Error> {
        open_protected(self.suite, &self.key, record)
    }
}

/// [`Protection::write`] with the suite and key apart (an established session keeps them so).
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_protected(
    suite: CipherSuite,
    key: &TrafficKey,
    out: &mut Vec<u8>,
    content_type: ContentType,
    epoch: u16,
    sequence: u64,
    cid: &[u8],
    plaintext: &[u8],
) -> Result<(), Error> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(Error::RecordOverflow);
    }
    let explicit = explicit_nonce(epoch, sequence);
    let mut body = plaintext.to_vec();
    let (outer_type, aad) = if cid.is_empty() {
        (
            content_type,
            classic_aad(epoch, sequence, content_type, body.len()),
        )
    } else {
        body.push(content_type.to_u8());
        (
            ContentType::Tls12Cid,
            cid_aad(epoch, sequence, cid, body.len()),
        )
    };
    key.seal(suite, &explicit, &aad, &mut body)?;
    header(out, outer_type, DTLS_1_2, epoch, sequence);
    out.extend_from_slice(cid);
    let len = EXPLICIT_NONCE_LEN + body.len();
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&explicit);
    out.extend_from_slice(&body);
    Ok(())
}

/// [`Protection::open`] with the suite and key apart.
pub(crate) fn open_protected(
    suite: CipherSuite,
    key: &TrafficKey,
    record: &Record<'_>,
) -> Result<(ContentType, Vec<u8>), Error> {
    // The version is part of the additional data (RFC 5246 §6.2.3.3); only DTLS 1.2 is
    // ever protected here.
    if record.version != DTLS_1_2 {
        return Err(Error::BadRecordMac);
    }
    let mut reader = Reader::new(record.fragment);
    let explicit: [u8; EXPLICIT_NONCE_LEN] = reader.array("explicit nonce")?;
    let mut body = reader.rest().to_vec();
    let plain_len = body
        .len()
        .checked_sub(suite.tag_len())
        .ok_or(Error::BadRecordMac)?;
    if record.content_type == ContentType::Tls12Cid {
        let aad = cid_aad(record.epoch, record.sequence, record.cid, plain_len);
        key.open(suite, &explicit, &aad, &mut body)?;
        let content_end = body
            .iter()
            .rposition(|&byte| byte != 0)
            .ok_or(Error::Invalid {
                what: "DTLSInnerPlaintext",
            })?;
        let inner_type = ContentType::from_u8(body[content_end]);
        body.truncate(content_end);
        Ok((inner_type, body))
    } else {
        let aad = classic_aad(
            record.epoch,
            record.sequence,
            record.content_type,
            plain_len,
        );
        key.open(suite, &explicit, &aad, &mut body)?;
        Ok((record.content_type, body))
    }
}

/// The sliding anti-replay window of RFC 6347 §4.1.2.6, 64 records wide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Highest sequence number accepted plus one (0: none yet).
    next: u64,
    /// Bit `i` set: `next - 1 - i` was accepted.
    bitmap: u64,
}

impl ReplayWindow {
    /// Width of the window.
    pub const WIDTH: u64 = 64;

    /// Whether `sequence` is new and inside the window (call before authenticating).
    pub fn is_fresh(&self, sequence: u64) -> bool {
        if sequence >= self.next {
            return true;
        }
        let age = self.next - 1 - sequence;
        age < Self::WIDTH && self.bitmap & (1 << age) == 0
    }

    /// Whether `sequence` is the newest seen so far (RFC 9146 §6: only such a record may move
    /// the peer's address).
    pub fn is_newest(&self, sequence: u64) -> bool {
        sequence >= self.next
    }

    /// Marks `sequence` as seen (call after authenticating).
    pub fn accept(&mut self, sequence: u64) {
        if sequence >= self.next {
            let shift = sequence - self.next + 1;
            self.bitmap = if shift >= Self::WIDTH {
                0
            } else {
                self.bitmap << shift
            };
            self.bitmap |= 1;
            self.next = sequence + 1;
        } else {
            let age = self.next - 1 - sequence;
            if age < Self::WIDTH {
                self.bitmap |= 1 << age;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn protection(suite: CipherSuite) -> Protection {
        Protection {
            suite,
            key: TrafficKey::new([3; 16], [9; 4]),
        }
    }

    #[test]
    fn plaintext_records_parse_back_several_per_datagram() {
        let mut datagram = Vec::new();
        write_plaintext(&mut datagram, ContentType::Handshake, DTLS_1_2, 7, b"abc");
        write_plaintext(&mut datagram, ContentType::Alert, DTLS_1_0, 8, &[1, 0]);
        let records: Vec<_> = Records::new(&datagram, 0).collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].content_type, ContentType::Handshake);
        assert_eq!(records[0].sequence, 7);
        assert_eq!(records[0].fragment, b"abc");
        assert_eq!(records[1].version, DTLS_1_0);
        assert_eq!(records[1].fragment, &[1, 0]);
    }

    #[test]
    fn truncated_record_ends_the_datagram() {
        let mut datagram = Vec::new();
        write_plaintext(
            &mut datagram,
            ContentType::Handshake,
            DTLS_1_2,
            1,
            b"abcdef",
        );
        datagram.truncate(datagram.len() - 1);
        assert_eq!(Records::new(&datagram, 0).count(), 0);
    }

    #[test]
    fn protected_record_round_trip_without_cid() {
        for suite in CipherSuite::ALL {
            let protection = protection(suite);
            let mut out = Vec::new();
            protection
                .write(&mut out, ContentType::ApplicationData, 1, 5, &[], b"data")
                .unwrap();
            assert_eq!(out.len(), HEADER_LEN + 4 + suite.overhead());
            let record = Records::new(&out, 0).next().unwrap();
            assert_eq!(record.epoch, 1);
            assert_eq!(record.sequence, 5);
            let (content_type, plaintext) = protection.open(&record).unwrap();
            assert_eq!(content_type, ContentType::ApplicationData);
            assert_eq!(plaintext, b"data");
        }
    }

    #[test]
    fn protected_record_round_trip_with_cid() {
        let protection = protection(CipherSuite::PskWithAes128Ccm8);
        let cid = [0xC1, 0xD0, 0x01, 0x02];
        let mut out = Vec::new();
        protection
            .write(&mut out, ContentType::ApplicationData, 1, 9, &cid, b"moved")
            .unwrap();
        assert_eq!(out[0], 25);
        assert_eq!(Record::peek_cid(&out, 4), Some(&cid[..]));
        let record = Records::new(&out, 4).next().unwrap();
        assert_eq!(record.cid, cid);
        let (content_type, plaintext) = protection.open(&record).unwrap();
        assert_eq!(content_type, ContentType::ApplicationData);
        assert_eq!(plaintext, b"moved");
    }

    #[test]
    fn header_fields_are_authenticated() {
        let protection = protection(CipherSuite::PskWithAes128Ccm8);
        let mut out = Vec::new();
        protection
            .write(&mut out, ContentType::ApplicationData, 1, 5, &[], b"data")
            .unwrap();
        for index in [0, 4, 10] {
            let mut tampered = out.clone();
            tampered[index] ^= 0x01;
            if let Some(record) = Records::new(&tampered, 0).next() {
                assert!(protection.open(&record).is_err(), "byte {index}");
            }
        }
    }

    #[test]
    fn replay_window_rejects_duplicates_and_old_records() {
        let mut window = ReplayWindow::default();
        assert!(window.is_fresh(0));
        window.accept(0);
        assert!(!window.is_fresh(0));
        window.accept(5);
        assert!(window.is_fresh(3));
        window.accept(3);
        assert!(!window.is_fresh(3));
        window.accept(100);
        assert!(!window.is_fresh(5));
        assert!(!window.is_fresh(36));
        assert!(window.is_fresh(37));
        assert!(!window.is_fresh(100));
        assert!(window.is_newest(101));
        assert!(!window.is_newest(99));
    }

    proptest! {
        #[test]
        fn record_parser_never_panics(datagram in proptest::collection::vec(any::<u8>(), 0..200),
                                      cid_len in 0usize..20) {
            for record in Records::new(&datagram, cid_len) {
                let _ = protection(CipherSuite::PskWithAes128Ccm8).open(&record);
            }
        }

        #[test]
        fn replay_window_accepts_each_sequence_once(seqs in proptest::collection::vec(0u64..200, 1..100)) {
            let mut window = ReplayWindow::default();
            let mut seen = std::collections::HashSet::new();
            for seq in seqs {
                if window.is_fresh(seq) {
                    prop_assert!(seen.insert(seq));
                    window.accept(seq);
                }
            }
        }
    }
}
