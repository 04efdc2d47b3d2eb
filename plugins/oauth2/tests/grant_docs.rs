//! Every `oauth2` example in docs/grants/*.md parses and builds, with its secret references
//! (and certificate file references) replaced by material generated here (keys and
//! certificates are never committed).

use authgate_plugin_oauth2::OAuth2Factory;
use authgate_plugin_sdk::testing::TestPki;
use authgate_plugin_sdk::ProviderFactory;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::Value;

fn rsa_pem() -> String {
    rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
        .unwrap()
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap()
        .to_string()
}

fn ec_pem() -> String {
    p256::SecretKey::random(&mut rand::thread_rng())
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap()
        .to_string()
}

/// Material made for one example: a CA and a client certificate with its key.
struct Pem {
    ca: String,
    cert: String,
    key: String,
}

impl Pem {
    fn new() -> Self {
        let pki = TestPki::new("docs CA");
        let (cert, key) = pki.client("gateway");
        Self {
            ca: pki.ca_pem,
            cert,
            key,
        }
    }
}

/// Public material that is usually a file, so a `${file:..}` reference is fine there.
const FILE_FIELDS: &[&str] = &["tls_client_certificate", "tls_ca_certificate"];

/// What the config loader would have read from the reference in `field`.
fn resolved(field: &str, settings: &Value, pem: &Pem) -> Value {
    match field {
        "tls_client_key" => Value::String(pem.key.clone()),
        "tls_client_certificate" => Value::String(pem.cert.clone()),
        "tls_ca_certificate" => Value::String(pem.ca.clone()),
        "private_key" => {
            let alg = settings["signing_alg"].as_str().unwrap_or("RS256");
            Value::String(if alg.starts_with("ES") {
                ec_pem()
            } else {
                rsa_pem()
            })
        }
        "service_account_key" => serde_json::json!({
            "type": "service_account", "private_key": rsa_pem(), "private_key_id": "k",
            "client_email": "sa@project.iam.example.com",
            "token_uri": "https://oauth2.example.com/token",
        })
        .to_string()
        .into(),
        _ => Value::String("resolved-secret-value".into()),
    }
}

fn is_reference(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.starts_with("${env:") || s.starts_with("${file:"))
}

/// Replaces every secret reference as the config loader would; a secret given inline (or a
/// reference in a non-secret field) fails the test.
fn resolve_all(page: &str, settings: &mut Value) {
    let snapshot = settings.clone();
    let pem = Pem::new();
    for (field, value) in settings.as_object_mut().expect("settings table") {
        let secret = OAuth2Factory.secret_fields().contains(&field.as_str());
        if FILE_FIELDS.contains(&field.as_str()) && is_reference(value) {
            *value = resolved(field, &snapshot, &pem);
            continue;
        }
        let items: Vec<&mut Value> = match value {
            Value::Array(items) => items.iter_mut().collect(),
            other => vec![other],
        };
        for item in items {
            if item.is_string() {
                assert_eq!(
                    is_reference(item),
                    secret,
                    "{page}: `{field}` must be a reference exactly when it is a secret"
                );
            }
            if secret {
                *item = resolved(field, &snapshot, &pem);
            }
        }
    }
}

#[test]
fn every_grant_page_example_builds() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/grants");
    let mut built = 0;
    for entry in std::fs::read_dir(dir).expect("docs/grants exists") {
        let path = entry.unwrap().path();
        let page = path.display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        for block in text.split("```toml").skip(1) {
            let block = block.split("```").next().unwrap();
            let doc: Value = toml::from_str(block)
                .unwrap_or_else(|e| panic!("{page}: example is not valid TOML: {e}"));
            for cred in doc["credentials"].as_array().into_iter().flatten() {
                assert_eq!(cred["provider"], "oauth2", "{page}");
                let mut settings = cred["settings"].clone();
                resolve_all(&page, &mut settings);
                if let Err(e) = OAuth2Factory.build(settings) {
                    panic!("{page}: example does not build: {e}");
                }
                built += 1;
            }
        }
    }
    assert!(built >= 5, "only {built} examples found");
}
