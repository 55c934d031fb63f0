//! Certificates for Redis's TLS port: a private CA and a server certificate
//! it signed, written as PEM files, and the `redis-server` arguments that
//! serve them.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// PEM files for a TLS port: the server's certificate and key, and the CA
/// that signed it.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

impl TlsFiles {
    /// A fresh CA, and a certificate for `localhost` and `127.0.0.1` it
    /// signed, written to `dir` (created if needed).
    pub fn generate(dir: &Path) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "jobgate test CA");
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
        let server_key = KeyPair::generate().expect("key");
        let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&server_key, &ca)
            .expect("server certificate");
        std::fs::create_dir_all(dir).expect("dir");
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write pem");
            path
        };
        Self {
            ca_file: write("ca.pem", ca.pem()),
            cert_file: write("server.pem", server.pem()),
            key_file: write("server.key", server_key.serialize_pem()),
        }
    }

    /// The `redis-server` arguments that serve TLS clients on `tls_port`
    /// with these files (no client certificates asked).
    pub fn redis_args(&self, tls_port: u16) -> Vec<String> {
        let path = |file: &PathBuf| file.to_str().expect("utf-8 path").to_owned();
        [
            "--tls-port".to_owned(),
            tls_port.to_string(),
            "--tls-cert-file".to_owned(),
            path(&self.cert_file),
            "--tls-key-file".to_owned(),
            path(&self.key_file),
            "--tls-ca-cert-file".to_owned(),
            path(&self.ca_file),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ]
        .into()
    }
}
