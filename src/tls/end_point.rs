//! The `tls-server-end-point` channel-binding value (RFC 5929 §4.1): a hash of the server's
//! certificate, taken with the hash function of the certificate's own signature, SHA-256 for
//! MD5 and SHA-1 signatures. SCRAM-SHA-256-PLUS mixes it into the proof, so a man in the middle
//! with a different certificate cannot relay a login.

use sha2::{Digest, Sha256, Sha384, Sha512};

/// DER encodings of the signature algorithm identifiers that call for SHA-384 or SHA-512.
const SHA384_SIGNATURES: [&[u8]; 2] = [
    // sha384WithRSAEncryption 1.2.840.113549.1.1.12
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
    // ecdsa-with-SHA384 1.2.840.10045.4.3.3
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
];
const SHA512_SIGNATURES: [&[u8]; 2] = [
    // sha512WithRSAEncryption 1.2.840.113549.1.1.13
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
    // ecdsa-with-SHA512 1.2.840.10045.4.3.4
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
];

/// One DER element: its tag, and its contents and whatever follows it.
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let width = usize::from(first & 0x7f);
        if width == 0 || width > 4 || rest.len() < width {
            return None;
        }
        let len = rest[..width]
            .iter()
            .fold(0_usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[width..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The OID of a certificate's outer `signatureAlgorithm`, if the DER has the X.509 shape.
fn signature_oid(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (SEQUENCE, certificate, _) = element(cert)? else {
        return None;
    };
    let (SEQUENCE, _tbs, rest) = element(certificate)? else {
        return None;
    };
    let (SEQUENCE, algorithm, _) = element(rest)? else {
        return None;
    };
    let (OID, oid, _) = element(algorithm)? else {
        return None;
    };
    Some(oid)
}

/// The channel-binding data for a certificate given in DER.
#[must_use]
pub fn tls_server_end_point(cert_der: &[u8]) -> Vec<u8> {
    match signature_oid(cert_der) {
        Some(oid) if SHA384_SIGNATURES.contains(&oid) => Sha384::digest(cert_der).to_vec(),
        Some(oid) if SHA512_SIGNATURES.contains(&oid) => Sha512::digest(cert_der).to_vec(),
        _ => Sha256::digest(cert_der).to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn hash_follows_the_signature_algorithm() {
        let p256 = cert_with(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(tls_server_end_point(&p256), Sha256::digest(&p256).to_vec());
        let p384 = cert_with(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(tls_server_end_point(&p384), Sha384::digest(&p384).to_vec());
    }

    #[test]
    fn garbage_falls_back_to_sha256() {
        assert_eq!(
            tls_server_end_point(b"\x30\x82"),
            Sha256::digest(b"\x30\x82").to_vec()
        );
        assert_eq!(tls_server_end_point(b""), Sha256::digest(b"").to_vec());
    }
}
