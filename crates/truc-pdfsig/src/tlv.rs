//! A minimal DER TLV walker, for the exact bytes that were signed.
//!
//! The typed decoders (`cms`, `x509-cert`) normalise what they read: `der` sorts
//! every SET OF on decoding, so re-encoding the decoded signed attributes or
//! certificates need not give back the bytes the signer (or the CA) signed. The
//! signature over the signed attributes and the certificate chain are therefore
//! checked on the original bytes, located with this walker. Definite lengths only
//! (DER); BER indefinite lengths are refused.

/// One TLV: its tag byte, its whole encoding and its value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    pub raw: &'a [u8],
    pub value: &'a [u8],
}

/// The first TLV of `input` and what follows it.
pub(crate) fn read(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let tag = *input.first()?;
    if tag & 0x1f == 0x1f {
        return None; // high tag numbers are not used by CMS
    }
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2usize)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None; // indefinite length (BER) or absurd
        }
        let mut len = 0usize;
        for b in input.get(2..2 + n)? {
            len = len.checked_mul(256)?.checked_add(usize::from(*b))?;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    let raw = input.get(..end)?;
    let value = raw.get(header..)?;
    Some((Tlv { tag, raw, value }, input.get(end..)?))
}

/// The TLVs that make up `value`, or `None` if it is not a sequence of TLVs.
pub(crate) fn children(mut value: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    while !value.is_empty() {
        let (t, rest) = read(value)?;
        out.push(t);
        value = rest;
    }
    Some(out)
}

/// The original bytes of the parts of a CMS ContentInfo that were signed.
#[derive(Debug)]
pub(crate) struct RawSignedData<'a> {
    /// Every certificate of `certificates` (plain X.509 ones only), in order.
    pub certificates: Vec<&'a [u8]>,
    /// The signed attributes of the only SignerInfo, with their `[0]` tag.
    pub signed_attrs: Option<&'a [u8]>,
}

/// Walks ContentInfo → SignedData → certificates and the one SignerInfo.
pub(crate) fn raw_signed_data(content_info: &[u8]) -> Option<RawSignedData<'_>> {
    let (ci, _) = read(content_info)?;
    let ci = children(ci.value)?;
    let explicit = ci.get(1).filter(|t| t.tag == 0xa0)?;
    let (sd, _) = read(explicit.value)?;
    let sd = children(sd.value)?;
    let mut certificates = Vec::new();
    if let Some(certs) = sd.iter().find(|t| t.tag == 0xa0) {
        for c in children(certs.value)? {
            if c.tag == 0x30 {
                certificates.push(c.raw);
            }
        }
    }
    let infos = sd.last().filter(|t| t.tag == 0x31)?;
    let infos = children(infos.value)?;
    let [info] = infos.as_slice() else {
        return None;
    };
    let fields = children(info.value)?;
    let signed_attrs = fields.get(3).filter(|t| t.tag == 0xa0).map(|t| t.raw);
    Some(RawSignedData {
        certificates,
        signed_attrs,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn lengths_are_checked() {
        assert!(super::read(&[0x30, 0x03, 1, 2]).is_none());
        assert!(super::read(&[0x30, 0x80, 0, 0]).is_none());
        assert!(super::read(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        let (t, rest) = super::read(&[0x04, 0x01, 7, 9]).unwrap();
        assert_eq!((t.tag, t.value, rest), (4, &[7u8][..], &[9u8][..]));
    }
}
