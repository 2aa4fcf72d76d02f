//! TLS with rustls: the listener's server configuration (TLS 1.2 and 1.3 only,
//! optional client certificates), and each cluster's client configuration (its own
//! CA, optional client certificate).
//!
//! Certificates and keys are read from PEM files. The listener's configuration is
//! rebuilt on every config reload, so renewed certificates are picked up without a
//! restart; connections already established keep the session they negotiated.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The listener's certificate, key and optional client CA (`[listener.tls]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// A cluster's CA and optional client certificate (`[clusters.X.tls]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in certs(path)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The listener's TLS configuration. With `client_ca`, clients must present a
/// certificate signed by it (mTLS).
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| format!("{} / {}: {e}", files.cert.display(), files.key.display()))?;
    Ok(Arc::new(config))
}

/// A cluster's TLS client configuration: its CA, and a client certificate when the
/// cluster asks for one.
pub fn client_config(tls: &UpstreamTls) -> Result<Arc<ClientConfig>, String> {
    let roots = match &tls.ca {
        Some(ca) => roots(ca)?,
        None => return Err("tls: `ca` is required to verify the cluster's brokers".into()),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key_path)) => builder
            .with_client_auth_cert(certs(cert)?, key(key_path)?)
            .map_err(|e| format!("{}: {e}", cert.display()))?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("tls: `cert` and `key` go together".into()),
    };
    Ok(Arc::new(config))
}

/// The principal of a client certificate, or `None` when the certificate gives
/// none: then the connection must not go on under some other certificate's name.
///
/// The subject is written as Kafka brokers write it, so a principal here is the one
/// a broker shows for the same certificate: Kafka's default SSL principal builder
/// takes `X500Principal.getName()`, which is RFC 2253 form as the JDK writes it
/// (`sun.security.x509.AVA.toRFC2253String`). That means:
/// - RDNs last-to-first from the DER sequence, joined by `,`; the attributes of a
///   multi-valued RDN in their DER order, joined by `+`;
/// - the types CN, C, L, ST, O, OU, STREET, DC and UID by name, any other as its
///   dotted OID with the value as `#` and the hex of its DER encoding (so is any
///   value that is not a string type);
/// - in string values, each of `,=+<>#;"\` escaped with `\`, NUL as `\00`, and
///   leading or trailing spaces (and CRs) escaped with `\` — a superset of what
///   RFC 4514 §2.4 requires, so distinct subjects give distinct strings (up to the
///   string type, and invalid UTF-8 which the JDK also replaces with U+FFFD).
///
/// Control characters other than NUL are kept as the JDK keeps them: whoever logs
/// a principal must escape it.
///
/// A certificate with an empty subject gets its first DNS, URI or e-mail subject
/// alternative name as `SAN:DNS:<name>`, `SAN:URI:<uri>` or `SAN:EMAIL:<address>`;
/// no RFC 2253 string can start that way (types are letters or digits only). With
/// neither, or when the certificate does not parse, there is no principal.
pub fn principal(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = rfc2253(parsed.subject());
    if !subject.is_empty() {
        return Some(subject);
    }
    san_principal(&parsed)
}

fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let mut rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(rfc2253_attribute)
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.reverse();
    rdns.join(",")
}

/// The types the JDK writes by name in RFC 2253 form; every other is a dotted OID.
fn rfc2253_keyword(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

fn rfc2253_attribute(attr: &x509_parser::x509::AttributeTypeAndValue<'_>) -> String {
    use x509_parser::der_parser::asn1_rs::{Class, Tag};
    let oid = attr.attr_type().to_id_string();
    let value = attr.attr_value();
    // The string types the JDK writes as text (`AVA.isDerString`, non-canonical).
    let text = value.header.class() == Class::Universal
        && !value.header.is_constructed()
        && matches!(
            value.header.tag(),
            Tag::PrintableString
                | Tag::T61String
                | Tag::Ia5String
                | Tag::GeneralString
                | Tag::BmpString
                | Tag::Utf8String
        );
    match rfc2253_keyword(&oid) {
        // The JDK reads the bytes of every one of these types as UTF-8.
        Some(keyword) if text => format!(
            "{keyword}={}",
            escape_rfc2253(&String::from_utf8_lossy(value.data))
        ),
        keyword => {
            let mut out = format!("{}=#", keyword.unwrap_or(&oid));
            for b in der_encoding(value) {
                out.push_str(&format!("{b:02x}"));
            }
            out
        }
    }
}

fn escape_rfc2253(value: &str) -> String {
    let mut escaped: Vec<char> = Vec::with_capacity(value.len());
    for c in value.chars() {
        match c {
            ',' | '=' | '+' | '<' | '>' | '#' | ';' | '"' | '\\' => {
                escaped.push('\\');
                escaped.push(c);
            }
            '\0' => escaped.extend(['\\', '0', '0']),
            _ => escaped.push(c),
        }
    }
    let blank = |c: &char| *c == ' ' || *c == '\r';
    let lead = escaped.iter().take_while(|c| blank(c)).count();
    let trail = escaped.iter().rev().take_while(|c| blank(c)).count();
    let mut out = String::with_capacity(escaped.len() + 4);
    let n = escaped.len();
    for (i, c) in escaped.into_iter().enumerate() {
        if i < lead || i + trail >= n {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A value's DER encoding (identifier, definite length, contents), as the JDK
/// re-encodes it for the `#hex` form.
fn der_encoding(value: &x509_parser::der_parser::asn1_rs::Any<'_>) -> Vec<u8> {
    let class = (value.header.class() as u8) << 6;
    let constructed = if value.header.is_constructed() {
        0x20
    } else {
        0
    };
    let tag = value.header.tag().0;
    let mut out = Vec::with_capacity(value.data.len() + 8);
    if tag < 31 {
        out.push(class | constructed | tag as u8);
    } else {
        out.push(class | constructed | 0x1f);
        let mut groups = Vec::new();
        let mut t = tag;
        loop {
            groups.push((t & 0x7f) as u8);
            t >>= 7;
            if t == 0 {
                break;
            }
        }
        let last = groups.len() - 1;
        for (i, g) in groups.iter().rev().enumerate() {
            out.push(if i < last { g | 0x80 } else { *g });
        }
    }
    let len = value.data.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value.data);
    out
}

fn san_principal(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    // A certificate with two SAN extensions is malformed: `Err`, so no principal.
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| {
        let (kind, value) = match name {
            GeneralName::DNSName(v) => ("DNS", v),
            GeneralName::URI(v) => ("URI", v),
            GeneralName::RFC822Name(v) => ("EMAIL", v),
            _ => return None,
        };
        Some(format!("SAN:{kind}:{}", escape_san(value)))
    })
}

/// Control characters and `\` as `\XX` per UTF-8 byte: one line, and reversible.
fn escape_san(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c.is_control() || c == '\\' {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // A few DER building blocks, enough for certificates that x509-parser reads.
    // Signatures are junk: `principal` reads a certificate the verifier accepted.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else if len < 0x100 {
            out.extend([0x81, len as u8]);
        } else {
            out.extend([0x82, (len >> 8) as u8, len as u8]);
        }
        out.extend_from_slice(content);
        out
    }

    fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    fn oid(dotted: &str) -> Vec<u8> {
        let arcs: Vec<u64> = dotted.split('.').map(|a| a.parse().unwrap()).collect();
        let mut body = Vec::new();
        for arc in std::iter::once(arcs[0] * 40 + arcs[1]).chain(arcs[2..].iter().copied()) {
            let mut groups = vec![(arc & 0x7f) as u8];
            let mut a = arc >> 7;
            while a > 0 {
                groups.push((a & 0x7f) as u8 | 0x80);
                a >>= 7;
            }
            body.extend(groups.iter().rev());
        }
        tlv(0x06, &body)
    }

    const UTF8: u8 = 0x0c;
    const PRINTABLE: u8 = 0x13;
    const IA5: u8 = 0x16;

    /// One attribute: (OID, string tag, value).
    type Atv<'a> = (&'a str, u8, &'a [u8]);

    /// A Name from RDNs in DER order, each a set of attributes.
    fn name(rdns: &[&[Atv<'_>]]) -> Vec<u8> {
        let rdns: Vec<Vec<u8>> = rdns
            .iter()
            .map(|rdn| {
                let atvs: Vec<Vec<u8>> = rdn
                    .iter()
                    .map(|(o, tag, v)| seq(&[oid(o), tlv(*tag, v)]))
                    .collect();
                tlv(0x31, &atvs.concat())
            })
            .collect();
        seq(&rdns)
    }

    /// SANs: (context tag number, value).
    fn cert(subject: Vec<u8>, sans: &[(u8, &str)]) -> CertificateDer<'static> {
        let alg = seq(&[oid("1.2.840.113549.1.1.11"), vec![0x05, 0x00]]);
        let mut tbs = vec![
            tlv(0xa0, &tlv(0x02, &[2])),
            tlv(0x02, &[1]),
            alg.clone(),
            name(&[&[(CN, UTF8, b"test-ca")]]),
            seq(&[tlv(0x17, b"250101000000Z"), tlv(0x17, b"350101000000Z")]),
            subject,
            seq(&[
                seq(&[oid("1.2.840.113549.1.1.1"), vec![0x05, 0x00]]),
                tlv(0x03, &[0, 1, 2, 3]),
            ]),
        ];
        if !sans.is_empty() {
            let names: Vec<Vec<u8>> = sans
                .iter()
                .map(|(t, v)| tlv(0x80 | t, v.as_bytes()))
                .collect();
            let ext = seq(&[oid("2.5.29.17"), tlv(0x04, &seq(&names))]);
            tbs.push(tlv(0xa3, &seq(&[ext])));
        }
        let der = seq(&[seq(&tbs), alg, tlv(0x03, &[0, 9, 9])]);
        CertificateDer::from(der)
    }

    const CN: &str = "2.5.4.3";
    const O: &str = "2.5.4.10";
    const OU: &str = "2.5.4.11";
    const C: &str = "2.5.4.6";
    const DC: &str = "0.9.2342.19200300.100.1.25";
    const EMAIL: &str = "1.2.840.113549.1.9.1";

    fn principal_of(rdns: &[&[Atv<'_>]]) -> Option<String> {
        principal(&cert(name(rdns), &[]))
    }

    #[test]
    fn rdns_come_last_first_as_kafka_shows_them() {
        // openssl -subj "/C=NL/O=Example/OU=Payments/CN=app-1" puts C first in DER.
        let p = principal_of(&[
            &[(C, PRINTABLE, b"NL")],
            &[(O, UTF8, b"Example")],
            &[(OU, UTF8, b"Payments")],
            &[(CN, UTF8, b"app-1")],
        ]);
        assert_eq!(p.as_deref(), Some("CN=app-1,OU=Payments,O=Example,C=NL"));
    }

    #[test]
    fn a_comma_in_a_value_cannot_forge_another_subject() {
        let honest = principal_of(&[&[(O, UTF8, b"Example")], &[(CN, UTF8, b"app-1")]]);
        let forged = principal_of(&[&[(CN, UTF8, b"app-1,O=Example")]]);
        assert_eq!(honest.as_deref(), Some("CN=app-1,O=Example"));
        assert_eq!(forged.as_deref(), Some("CN=app-1\\,O\\=Example"));
        // And the ", " form the old code produced by flattening.
        let spaced = principal_of(&[&[(CN, UTF8, b"app-1, O=Example")]]);
        assert_eq!(spaced.as_deref(), Some("CN=app-1\\, O\\=Example"));
        assert_ne!(honest, spaced);
    }

    #[test]
    fn values_are_escaped_like_the_jdk_does() {
        let p = |v: &[u8]| principal_of(&[&[(CN, UTF8, v)]]).unwrap();
        assert_eq!(p(b" lead"), "CN=\\ lead");
        assert_eq!(p(b"trail  "), "CN=trail\\ \\ ");
        assert_eq!(p(b"#hash"), "CN=\\#hash");
        assert_eq!(p(b"a+b;c<d>e\"f\\g"), "CN=a\\+b\\;c\\<d\\>e\\\"f\\\\g");
        assert_eq!(p(b"nul\0byte"), "CN=nul\\00byte");
        assert_eq!(p(b"in ner"), "CN=in ner");
        assert_eq!(p("caf\u{e9}".as_bytes()), "CN=caf\u{e9}");
    }

    #[test]
    fn multi_valued_rdns_join_with_plus() {
        let p = principal_of(&[
            &[(O, UTF8, b"Example")],
            &[(CN, UTF8, b"app-1"), (OU, UTF8, b"Payments")],
        ]);
        assert_eq!(p.as_deref(), Some("CN=app-1+OU=Payments,O=Example"));
        // Not the same as a `+` inside one value.
        let q = principal_of(&[
            &[(O, UTF8, b"Example")],
            &[(CN, UTF8, b"app-1+OU=Payments")],
        ]);
        assert_eq!(q.as_deref(), Some("CN=app-1\\+OU\\=Payments,O=Example"));
    }

    #[test]
    fn other_types_are_dotted_oids_with_hex_values() {
        let p = principal_of(&[
            &[(DC, IA5, b"example")],
            &[(EMAIL, IA5, b"a@b")],
            &[(CN, UTF8, b"x")],
        ]);
        assert_eq!(
            p.as_deref(),
            Some("CN=x,1.2.840.113549.1.9.1=#1603614062,DC=example")
        );
        // A known type with a non-string value is hex too, and cannot be confused
        // with a string that starts with `#` (escaped above).
        let int = principal(&cert(
            seq(&[tlv(0x31, &seq(&[oid(CN), tlv(0x02, &[5])]))]),
            &[],
        ));
        assert_eq!(int.as_deref(), Some("CN=#020105"));
    }

    #[test]
    fn an_empty_subject_falls_back_to_the_first_san_or_has_no_principal() {
        let empty = seq(&[]);
        assert_eq!(principal(&cert(empty.clone(), &[])), None);
        let p = principal(&cert(
            empty.clone(),
            &[(7, "\x7f\0\0\x01"), (2, "app-1.example")],
        ));
        assert_eq!(p.as_deref(), Some("SAN:DNS:app-1.example"));
        let p = principal(&cert(empty.clone(), &[(6, "spiffe://example/app-1")]));
        assert_eq!(p.as_deref(), Some("SAN:URI:spiffe://example/app-1"));
        let p = principal(&cert(empty.clone(), &[(1, "app@example")]));
        assert_eq!(p.as_deref(), Some("SAN:EMAIL:app@example"));
        let p = principal(&cert(empty, &[(2, "evil\nline\\")]));
        assert_eq!(p.as_deref(), Some("SAN:DNS:evil\\0Aline\\5C"));
        // A subject wins over SANs.
        let p = principal(&cert(name(&[&[(CN, UTF8, b"app-1")]]), &[(2, "other")]));
        assert_eq!(p.as_deref(), Some("CN=app-1"));
    }

    #[test]
    fn garbage_is_no_principal() {
        assert_eq!(
            principal(&CertificateDer::from(vec![0x30, 0x03, 1, 2])),
            None
        );
        assert_eq!(principal(&CertificateDer::from(Vec::new())), None);
    }
}
