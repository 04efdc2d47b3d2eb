use super::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "test CA");
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// (certificate PEM, key PEM) for a client named `cn`.
fn client(ca: &Ca, cn: &str) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn parse(cert: &str, key: &str) -> Result<ClientIdentity, SettingsError> {
    ClientIdentity::parse(
        "tls_client_certificate",
        cert,
        "tls_client_key",
        &Secret::from(key),
    )
}

/// A middle line of a PEM body: found only if the key leaked.
fn canary(pem: &str) -> &str {
    pem.lines().nth(1).unwrap()
}

#[test]
fn a_matching_chain_and_key_parse_and_print_no_key() {
    let ca = ca();
    let (cert, key) = client(&ca, "gateway");
    let chain = format!("{cert}{}", ca.pem);
    let id = parse(&chain, &key).unwrap();
    assert_eq!(id.subject(), "CN=gateway");
    // rcgen's default validity ends in 4096.
    assert!(
        id.expires_at_unix() > 4_000_000_000,
        "{}",
        id.expires_at_unix()
    );
    assert!(id.expires_at().contains("4096"), "{}", id.expires_at());
    let tls = ClientTls::new(Some(id))
        .trust_ca("tls_ca_certificate", &ca.pem)
        .unwrap();
    let debug = format!("{tls:?}");
    assert!(
        debug.contains("CN=gateway") && debug.contains("CN=test CA"),
        "{debug}"
    );
    assert!(!debug.contains(canary(&key)), "{debug}");
    assert!(!tls.is_empty());
    // `\n` escaped, as keys arrive through environment variables.
    assert!(parse(&cert, &key.replace('\n', "\\n")).is_ok());
}

#[test]
fn a_key_of_another_certificate_is_refused_naming_both_fields() {
    let ca = ca();
    let (cert, _) = client(&ca, "gateway");
    let (_, other_key) = client(&ca, "someone-else");
    let e = parse(&cert, &other_key).unwrap_err().0;
    assert!(
        e.contains("`tls_client_key` does not belong") && e.contains("`tls_client_certificate`"),
        "{e}"
    );
    assert!(!e.contains(canary(&other_key)), "{e}");
    // The CA first: the key is not the first certificate's.
    let (cert, key) = client(&ca, "gateway");
    let e = parse(&format!("{}{cert}", ca.pem), &key).unwrap_err().0;
    assert!(e.contains("first"), "{e}");
}

#[test]
fn bad_material_gets_a_message_that_says_what_to_put_there() {
    let ca = ca();
    let (cert, key) = client(&ca, "gateway");
    for (cert_text, key_text, field, words) in [
        (
            "",
            key.as_str(),
            "`tls_client_certificate`",
            "has no certificate",
        ),
        (
            "not pem at all",
            key.as_str(),
            "`tls_client_certificate`",
            "has no certificate",
        ),
        (
            key.as_str(),
            key.as_str(),
            "`tls_client_certificate`",
            "holds a private key",
        ),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            key.as_str(),
            "`tls_client_certificate`",
            "not a valid X.509",
        ),
        (
            cert.as_str(),
            cert.as_str(),
            "`tls_client_key`",
            "is not a PEM private key",
        ),
        (
            cert.as_str(),
            "",
            "`tls_client_key`",
            "is not a PEM private key",
        ),
        (
            cert.as_str(),
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            "`tls_client_key`",
            "encrypted",
        ),
    ] {
        let e = parse(cert_text, key_text).unwrap_err().0;
        assert!(e.starts_with(field) && e.contains(words), "{e}");
        assert!(!e.contains(canary(&key)), "{e}");
    }
    let two_keys = format!("{key}{key}");
    assert!(parse(&cert, &two_keys)
        .unwrap_err()
        .0
        .contains("more than one"));
}

#[test]
fn a_ca_field_takes_certificates_only() {
    let ca = ca();
    let (_, key) = client(&ca, "gateway");
    let e = ClientTls::default()
        .trust_ca("tls_ca_certificate", &format!("{}{key}", ca.pem))
        .unwrap_err()
        .0;
    assert!(e.contains("holds a private key"), "{e}");
    assert!(!e.contains(canary(&key)), "{e}");
    let tls = ClientTls::default()
        .trust_ca("tls_ca_certificate", &ca.pem)
        .unwrap();
    assert!(tls.identity().is_none() && !tls.is_empty());
}

/// An error that hides its cause behind `source()`, as hyper's and reqwest's do.
#[derive(Debug)]
struct Wrapped(std::io::Error);

impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("client error (Connect)")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn io(e: rustls::Error) -> Wrapped {
    Wrapped(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[test]
fn tls_failures_are_classified_by_whose_fault_they_are() {
    use crate::{ProviderError, RejectKind};
    let refused = classify_failure(
        "token",
        &io(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired,
        )),
    );
    match refused {
        Some(ProviderError::Rejected {
            kind: RejectKind::Credential,
            code,
            description: Some(d),
            ..
        }) => {
            assert_eq!(code, "invalid_client");
            assert!(
                d.contains("CertificateRequired") && d.contains("tls_client_certificate"),
                "{d}"
            );
        }
        other => panic!("{other:?}"),
    }
    let untrusted = classify_failure(
        "token",
        &io(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        )),
    )
    .unwrap();
    assert!(matches!(untrusted, ProviderError::InvalidConfiguration(_)));
    assert!(
        untrusted.to_string().contains("tls_ca_certificate"),
        "{untrusted}"
    );
    // Anything else is left to the transport's usual (transient) handling.
    assert!(classify_failure("token", &io(rustls::Error::HandshakeNotComplete)).is_none());
    let plain = Wrapped(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "refused",
    ));
    assert!(classify_failure("token", &plain).is_none());
}
