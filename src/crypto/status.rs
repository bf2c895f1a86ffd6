//! Status lists: IETF Token Status List (`status_list: {bits, lst}`, zlib, LSB-first) and W3C
//! Bitstring Status List (`encodedList`, gzip + multibase base64url, MSB-first).

use serde_json::Value;
use std::io::{Read, Write};

use super::{b64url, b64url_decode, CryptoError, CryptoResult};

/// A status array of `size` entries of `bits` bits each (1, 2, 4 or 8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusArray {
    pub bits: u8,
    pub bytes: Vec<u8>,
}

impl StatusArray {
    pub fn new(bits: u8, size: u64) -> CryptoResult<Self> {
        if ![1, 2, 4, 8].contains(&bits) {
            return Err(CryptoError::Unsupported(format!("{bits} bits per status")));
        }
        let len = (size * u64::from(bits)).div_ceil(8);
        Ok(Self {
            bits,
            bytes: vec![
                0;
                usize::try_from(len).map_err(|_| CryptoError::Unsupported("size".into()))?
            ],
        })
    }

    pub fn capacity(&self) -> u64 {
        self.bytes.len() as u64 * 8 / u64::from(self.bits)
    }

    fn locate(&self, index: u64) -> CryptoResult<(usize, u32)> {
        if index >= self.capacity() {
            return Err(CryptoError::Malformed(format!(
                "status index {index} out of range"
            )));
        }
        let bit = index * u64::from(self.bits);
        Ok(((bit / 8) as usize, (bit % 8) as u32))
    }

    /// Token Status List order: entry 0 in the least significant bits of byte 0.
    pub fn get_lsb(&self, index: u64) -> CryptoResult<u8> {
        let (byte, shift) = self.locate(index)?;
        let mask = ((1u16 << self.bits) - 1) as u8;
        Ok((self.bytes[byte] >> shift) & mask)
    }

    pub fn set_lsb(&mut self, index: u64, value: u8) -> CryptoResult<()> {
        let (byte, shift) = self.locate(index)?;
        let mask = ((1u16 << self.bits) - 1) as u8;
        if value > mask {
            return Err(CryptoError::Malformed(format!(
                "status value {value} needs more than {} bits",
                self.bits
            )));
        }
        self.bytes[byte] = (self.bytes[byte] & !(mask << shift)) | (value << shift);
        Ok(())
    }

    /// Bitstring Status List order (1 bit): entry 0 is the most significant bit of byte 0.
    pub fn get_msb(&self, index: u64) -> CryptoResult<bool> {
        let (byte, shift) = self.locate(index)?;
        Ok(self.bytes[byte] & (0x80 >> shift) != 0)
    }

    pub fn set_msb(&mut self, index: u64, on: bool) -> CryptoResult<()> {
        let (byte, shift) = self.locate(index)?;
        if on {
            self.bytes[byte] |= 0x80 >> shift;
        } else {
            self.bytes[byte] &= !(0x80 >> shift);
        }
        Ok(())
    }

    /// `lst` of a Token Status List: base64url(zlib(bytes)).
    pub fn to_token_lst(&self) -> String {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        let _ = enc.write_all(&self.bytes);
        b64url(enc.finish().unwrap_or_default())
    }

    /// zlib(bytes): the `lst` of a Token Status List in CWT form (a byte string).
    pub fn to_zlib(&self) -> Vec<u8> {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        let _ = enc.write_all(&self.bytes);
        enc.finish().unwrap_or_default()
    }

    pub fn from_zlib(bits: u8, lst: &[u8]) -> CryptoResult<Self> {
        if ![1, 2, 4, 8].contains(&bits) {
            return Err(CryptoError::Unsupported(format!("{bits} bits per status")));
        }
        let bytes = inflate(flate2::read::ZlibDecoder::new(lst))?;
        Ok(Self { bits, bytes })
    }

    pub fn from_token_lst(bits: u8, lst: &str) -> CryptoResult<Self> {
        if ![1, 2, 4, 8].contains(&bits) {
            return Err(CryptoError::Unsupported(format!("{bits} bits per status")));
        }
        let bytes = inflate(flate2::read::ZlibDecoder::new(
            b64url_decode(lst)?.as_slice(),
        ))?;
        Ok(Self { bits, bytes })
    }

    /// `encodedList` of a Bitstring Status List: multibase base64url ("u") of gzip(bytes).
    pub fn to_encoded_list(&self) -> String {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let _ = enc.write_all(&self.bytes);
        format!("u{}", b64url(enc.finish().unwrap_or_default()))
    }

    pub fn from_encoded_list(encoded: &str) -> CryptoResult<Self> {
        let data = encoded.strip_prefix('u').ok_or_else(|| {
            CryptoError::Malformed("encodedList must be multibase base64url (u...)".into())
        })?;
        let bytes = inflate(flate2::read::GzDecoder::new(
            b64url_decode(data)?.as_slice(),
        ))?;
        Ok(Self { bits: 1, bytes })
    }
}

/// Clock skew allowed for a status list token's `iat` ahead of the verifier's clock.
const IAT_SKEW_SECS: i64 = 300;

/// Whether a status list token signed at `iat` and expiring at `exp` may be used at `now`, and
/// until when (`None`: no end): not expired (a relying party must check `exp` when present), not
/// signed in the future, and — with a `max_age` — signed at most that long ago, so a list from
/// before a revocation, replayed by a cache or anyone on the path, stops counting. `iat_required`:
/// the token must carry `iat` (a Token Status List token must; a Bitstring Status List credential
/// need not).
pub fn freshness(
    iat: Option<i64>,
    exp: Option<i64>,
    now: i64,
    max_age: Option<i64>,
    iat_required: bool,
) -> Result<Option<i64>, String> {
    if exp.is_some_and(|exp| exp <= now) {
        return Err("the status list token expired".into());
    }
    let Some(iat) = iat else {
        if iat_required {
            return Err("the status list token has no iat: when it was made is not known".into());
        }
        return Ok(exp);
    };
    if iat > now.saturating_add(IAT_SKEW_SECS) {
        return Err("the status list token was issued in the future".into());
    }
    let aged_out = max_age.map(|age| iat.saturating_add(age));
    if aged_out.is_some_and(|t| t <= now) {
        return Err(format!(
            "the status list token was issued {} s ago, more than the {} s this verifier accepts",
            now.saturating_sub(iat),
            max_age.unwrap_or_default()
        ));
    }
    Ok(match (exp, aged_out) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// A Token Status List token is one (`typ` `statuslist+jwt`) and is the list at `uri` (`sub`):
/// another token the issuer signed — a credential, or another of its lists — is not this list.
pub fn token_list_ok(header: &Value, list: &Value, uri: &str) -> Result<(), String> {
    if header["typ"].as_str() != Some("statuslist+jwt") {
        return Err(format!(
            "the status list token's typ is {}, not statuslist+jwt",
            header["typ"]
        ));
    }
    if list["sub"].as_str() != Some(uri) {
        return Err("the status list token's sub is not the URI it was fetched from".into());
    }
    Ok(())
}

/// A Bitstring Status List credential that names itself (`id`) names the URI it came from.
pub fn bitstring_list_ok(list: &Value, uri: &str) -> Result<(), String> {
    let id = list.get("id").or_else(|| list["vc"].get("id"));
    match id {
        Some(id) if id.as_str() != Some(uri) => {
            Err("the status list credential's id is not the URI it was fetched from".into())
        }
        _ => Ok(()),
    }
}

/// A Bitstring Status List entry (`credentialStatus`): its purpose and the index it names. One
/// bit per credential (`statusSize` 1: a wider entry would read the wrong bit); the index as the
/// spec's string or a number, never a default (a missing index read bit 0).
pub fn bitstring_entry(entry: &Value) -> Result<(String, u64), String> {
    if entry
        .get("statusSize")
        .is_some_and(|s| s.as_u64() != Some(1))
    {
        return Err("statusSize other than 1 is not supported".into());
    }
    let idx = entry["statusListIndex"]
        .as_str()
        .and_then(|s| s.parse::<u64>().ok())
        .or(entry["statusListIndex"].as_u64())
        .ok_or("status entry without index")?;
    let purpose = entry["statusPurpose"].as_str().unwrap_or("revocation");
    Ok((purpose.to_string(), idx))
}

/// Whether the bit at `idx` is set in a Bitstring Status List credential (signature, issuer and
/// freshness already checked) for `purpose`: the list must answer for that purpose (a revocation
/// list does not answer for suspension; it names one purpose or several).
pub fn bitstring_bit(list: &Value, purpose: &str, idx: u64) -> Result<bool, String> {
    let subject = if list["credentialSubject"].is_object() {
        &list["credentialSubject"]
    } else {
        &list["vc"]["credentialSubject"]
    };
    let answers_for = match &subject["statusPurpose"] {
        Value::String(p) => p == purpose,
        Value::Array(ps) => ps.iter().any(|p| p.as_str() == Some(purpose)),
        _ => false,
    };
    if !answers_for {
        return Err(format!(
            "the status list does not answer for the purpose {purpose}"
        ));
    }
    StatusArray::from_encoded_list(subject["encodedList"].as_str().unwrap_or_default())
        .and_then(|a| a.get_msb(idx))
        .map_err(|e| format!("status list: {e}"))
}

/// Decompresses with a ceiling (a status list is never above 16 MiB).
fn inflate(r: impl Read) -> CryptoResult<Vec<u8>> {
    let mut out = Vec::new();
    r.take(16 * 1024 * 1024 + 1)
        .read_to_end(&mut out)
        .map_err(|e| CryptoError::Malformed(format!("status list compression: {e}")))?;
    if out.len() > 16 * 1024 * 1024 {
        return Err(CryptoError::Malformed("status list too large".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_status_list_two_bits_round_trip() {
        let mut a = StatusArray::new(2, 131_072).unwrap();
        a.set_lsb(0, 1).unwrap();
        a.set_lsb(5, 2).unwrap();
        a.set_lsb(131_071, 3).unwrap();
        assert!(a.set_lsb(131_072, 1).is_err());
        assert!(a.set_lsb(1, 4).is_err());
        let b = StatusArray::from_token_lst(2, &a.to_token_lst()).unwrap();
        assert_eq!(b.get_lsb(0).unwrap(), 1);
        assert_eq!(b.get_lsb(1).unwrap(), 0);
        assert_eq!(b.get_lsb(5).unwrap(), 2);
        assert_eq!(b.get_lsb(131_071).unwrap(), 3);
        // first byte: entry 0 in the low bits
        assert_eq!(b.bytes[0], 0b0000_0001);
    }

    #[test]
    fn token_status_list_spec_example() {
        // draft-ietf-oauth-status-list 1-bit example: byte 0 = 0xB9, byte 1 = 0xA3
        let mut a = StatusArray::new(1, 16).unwrap();
        for (i, v) in [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]
            .iter()
            .enumerate()
        {
            a.set_lsb(i as u64, *v).unwrap();
        }
        assert_eq!(a.bytes, vec![0xB9, 0xA3]);
    }

    #[test]
    fn bitstring_round_trip_msb_first() {
        let mut a = StatusArray::new(1, 131_072).unwrap();
        a.set_msb(0, true).unwrap();
        a.set_msb(9, true).unwrap();
        assert_eq!(a.bytes[0], 0x80);
        assert_eq!(a.bytes[1], 0x40);
        let enc = a.to_encoded_list();
        assert!(enc.starts_with('u'));
        let b = StatusArray::from_encoded_list(&enc).unwrap();
        assert!(b.get_msb(0).unwrap() && b.get_msb(9).unwrap() && !b.get_msb(1).unwrap());
        a.set_msb(9, false).unwrap();
        assert!(!a.get_msb(9).unwrap());
    }

    #[test]
    fn a_token_status_list_of_an_impossible_width_is_refused_not_divided_by() {
        let lst = StatusArray::new(1, 8).unwrap().to_token_lst();
        for bits in [0u8, 3, 5, 16, 255] {
            assert!(StatusArray::from_token_lst(bits, &lst).is_err(), "{bits}");
        }
        assert_eq!(
            StatusArray::from_token_lst(2, &lst)
                .unwrap()
                .get_lsb(3)
                .unwrap(),
            0
        );
    }

    #[test]
    fn freshness_bounds_a_status_list_by_exp_iat_and_age() {
        let day = 86_400;
        // fresh: good until the earlier of exp and iat + max age
        assert_eq!(
            freshness(Some(1000), Some(9000), 2000, Some(day), true),
            Ok(Some(9000))
        );
        assert_eq!(
            freshness(Some(1000), None, 2000, Some(day), true),
            Ok(Some(1000 + day))
        );
        assert_eq!(freshness(Some(1000), None, 2000, None, true), Ok(None));
        // expired, too old, from the future, or without the iat it must carry
        assert!(freshness(Some(1000), Some(2000), 2000, None, true).is_err());
        assert!(freshness(Some(1000), None, 1000 + day, Some(day), true).is_err());
        assert!(freshness(Some(5000), None, 2000, None, true).is_err());
        assert!(freshness(None, Some(9000), 2000, Some(day), true).is_err());
        // a Bitstring list need not carry iat: only exp counts then
        assert_eq!(
            freshness(None, Some(9000), 2000, Some(day), false),
            Ok(Some(9000))
        );
    }
}
