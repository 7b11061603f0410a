//! Test certificates: a throw-away CA per server, server certs for loopback, client certs.

use crate::{Error, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// PEM files on disk for one TLS identity, plus the CA that issued it.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority for one test environment.
pub struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

fn rc(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |e| Error::other(what, e)
}

impl Pki {
    /// Creates a CA named `name` and writes `ca.crt` into `dir`.
    pub fn new(name: &str, dir: &Path) -> Result<Pki> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc("CA params"))?;
        params.distinguished_name.push(DnType::CommonName, format!("{name}-ca"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().map_err(rc("CA key"))?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(rc("self-sign CA"))?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        write(&dir.join("ca.crt"), &issuer.pem())?;
        Ok(Pki { issuer, dir: dir.to_path_buf() })
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A serving certificate for 127.0.0.1/localhost (plus `extra_sans`), usable as client too
    /// (etcd uses the same pair for peer traffic).
    pub fn server(&self, file_stem: &str, extra_sans: &[&str]) -> Result<TlsFiles> {
        let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        sans.extend(extra_sans.iter().map(|s| s.to_string()));
        let mut params = CertificateParams::new(sans).map_err(rc("server cert params"))?;
        params.distinguished_name.push(DnType::CommonName, file_stem);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(file_stem, params)
    }

    /// A client certificate with common name `cn` and organisations `groups`.
    pub fn client(&self, file_stem: &str, cn: &str, groups: &[&str]) -> Result<TlsFiles> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc("client cert params"))?;
        params.distinguished_name.push(DnType::CommonName, cn);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(file_stem, params)
    }

    fn issue(&self, file_stem: &str, mut params: CertificateParams) -> Result<TlsFiles> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate().map_err(rc("leaf key"))?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rc("sign leaf"))?;
        let files = TlsFiles {
            ca: self.ca_path(),
            cert: self.dir.join(format!("{file_stem}.crt")),
            key: self.dir.join(format!("{file_stem}.key")),
        };
        write(&files.cert, &cert.pem())?;
        write(&files.key, &key.serialize_pem())?;
        Ok(files)
    }
}

pub(crate) fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|e| Error::io(format!("write {}", path.display()), e))
}
