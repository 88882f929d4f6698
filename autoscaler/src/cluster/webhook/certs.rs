//! The webhook's own CA and serving certificate, kept in one Secret, and the rotation that replaces them
//! without a moment in which the API server distrusts the certificate a replica serves. Pure: [`plan`] takes
//! the Secret's data and the time, and says what to write next.
//!
//! The API server trusts the webhook configuration's `caBundle`, which the leader copies from the Secret's
//! `ca-bundle.crt`. A serving certificate is renewed under the same CA at two thirds of its life, which needs
//! no change of trust. A CA is rotated in three writes, each waiting until the step before it has settled
//! (the bundle has been in the webhook configuration, and every replica has reloaded the Secret, for
//! [`Policy::settle`]):
//!
//! 1. at two thirds of the CA's life a next CA is made and added to the bundle (both trusted);
//! 2. once that bundle is in force, the next CA becomes the CA and signs a new serving certificate (the old
//!    CA stays in the bundle while replicas still serve certificates it signed);
//! 3. once the new certificate is served everywhere, the old CA leaves the bundle.
//!
//! Only a CA already expired (an autoscaler stopped for most of a CA's life) is replaced at once, with a
//! short window of refused calls until the new bundle is in force.

use std::collections::BTreeMap;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};

/// The serving certificate (PEM), the key the webhook listener uses with it, and the CA that signed it:
/// the names cert-manager writes too, so a Secret it manages can take this one's place.
pub const TLS_CRT: &str = "tls.crt";
/// The serving certificate's private key (PKCS#8 PEM).
pub const TLS_KEY: &str = "tls.key";
/// The CA that signs the serving certificate now.
pub const CA_CRT: &str = "ca.crt";
/// Its private key.
pub const CA_KEY: &str = "ca.key";
/// Every CA the API server must trust now: what the leader writes into `caBundle`.
pub const CA_BUNDLE: &str = "ca-bundle.crt";
/// The next CA's key, while a rotation publishes it.
pub const NEXT_CA_KEY: &str = "next-ca.key";
/// The next CA's certificate.
pub const NEXT_CA_CRT: &str = "next-ca.crt";
/// The rotation's clock: when each part was made and when it expires (JSON, [`Rotation`]).
pub const ROTATION: &str = "rotation.json";

/// How long certificates live and how long a step of a rotation waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// A CA's lifetime.
    pub ca_validity: Duration,
    /// A serving certificate's lifetime (cut to its CA's).
    pub cert_validity: Duration,
    /// How long a new bundle or certificate is given to reach the API server and every replica.
    pub settle: Duration,
    /// The serving certificate's names (DNS names and IP addresses).
    pub hosts: Vec<String>,
}

impl Policy {
    /// A policy with `settle` derived from the CA's lifetime: a tenth of it, at most a minute.
    pub fn new(ca_validity: Duration, cert_validity: Duration, hosts: Vec<String>) -> Self {
        let settle = (ca_validity / 10).min(Duration::from_secs(60));
        Self { ca_validity, cert_validity, settle, hosts }
    }
}

/// When a certificate was made and when it expires (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifetime {
    /// When it was made.
    pub issued: i64,
    /// Its `notAfter`.
    pub not_after: i64,
}

impl Lifetime {
    /// Two thirds of the way: when it is replaced.
    pub fn renew_at(&self) -> i64 {
        self.issued + (self.not_after - self.issued) * 2 / 3
    }
}

/// A CA: its subject's common name (each CA has its own, so that chains never mix them up) and lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ca {
    /// The common name.
    pub name: String,
    /// Its lifetime.
    pub lifetime: Lifetime,
}

/// The rotation's state, stored beside the PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    /// The CA that signs.
    pub ca: Ca,
    /// The serving certificate and the names it was made for.
    pub cert: Lifetime,
    /// The serving certificate's names.
    pub hosts: Vec<String>,
    /// The next CA, published in the bundle since `published`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Next>,
    /// The previous CA (PEM), kept in the bundle until `drop_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Previous>,
}

/// A CA published before it signs anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Next {
    /// The CA.
    pub ca: Ca,
    /// When it entered the bundle.
    pub published: i64,
}

/// A CA that no longer signs, still trusted for a while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Previous {
    /// Its certificate (PEM).
    pub pem: String,
    /// When it leaves the bundle.
    pub drop_at: i64,
}

/// The Secret's data.
pub type Data = BTreeMap<String, Vec<u8>>;

/// What to do with the Secret now.
#[derive(Debug)]
pub enum Step {
    /// Nothing.
    Keep,
    /// Write `data` (an update of the Secret), because of `why`.
    Write {
        /// The new data.
        data: Data,
        /// A sentence for the log.
        why: String,
    },
}

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot make the webhook's certificates: {0}")]
pub struct Error(#[from] rcgen::Error);

/// What the Secret's data means, when it is ebb's: the rotation state and the PEM files it names.
fn read(data: &Data) -> Option<Rotation> {
    let state: Rotation = serde_json::from_slice(data.get(ROTATION)?).ok()?;
    for key in [TLS_CRT, TLS_KEY, CA_CRT, CA_KEY, CA_BUNDLE] {
        if data.get(key).is_none_or(|v| v.is_empty()) {
            return None;
        }
    }
    if state.next.is_some() && (data.get(NEXT_CA_KEY).is_none() || data.get(NEXT_CA_CRT).is_none()) {
        return None;
    }
    Some(state)
}

/// The next step for `data` (the Secret's, empty when it holds nothing) at `now` (Unix seconds).
/// `bundle_in_force_since` is when the webhook configuration's `caBundle` was last seen to equal the Secret's
/// `ca-bundle.crt` (`None`: not yet), so that a CA is not used before the API server trusts it.
pub fn plan(
    data: &Data,
    now: i64,
    bundle_in_force_since: Option<i64>,
    policy: &Policy,
) -> Result<Step, Error> {
    let settle = policy.settle.as_secs() as i64;
    let settled = |since: i64| now >= since + settle;
    let Some(mut state) = read(data) else {
        return Ok(Step::Write { data: fresh(now, policy)?, why: "no certificates yet: a new CA".into() });
    };
    if now >= state.ca.lifetime.not_after {
        return Ok(Step::Write { data: fresh(now, policy)?, why: "the CA expired: a new CA".into() });
    }
    let mut data = data.clone();
    // 3. The old CA leaves the bundle.
    if let Some(previous) = &state.previous
        && now >= previous.drop_at
    {
        state.previous = None;
        write_bundle(&mut data, &state);
        return Ok(write(data, state, "the previous CA leaves the bundle"));
    }
    // 2. The published CA takes over, once the bundle naming it is in force.
    if let Some(next) = state.next.clone() {
        let in_force = bundle_in_force_since.is_some_and(|since| since >= next.published && settled(since));
        if !in_force || !settled(next.published) {
            return Ok(Step::Keep);
        }
        let old = data.get(CA_CRT).cloned().unwrap_or_default();
        data.insert(CA_CRT.into(), data[NEXT_CA_CRT].clone());
        data.insert(CA_KEY.into(), data[NEXT_CA_KEY].clone());
        data.remove(NEXT_CA_CRT);
        data.remove(NEXT_CA_KEY);
        state.ca = next.ca;
        state.next = None;
        state.previous =
            Some(Previous { pem: String::from_utf8_lossy(&old).into_owned(), drop_at: now + settle });
        sign_serving(&mut data, &mut state, now, policy)?;
        write_bundle(&mut data, &state);
        return Ok(write(data, state, "the next CA takes over and signs a new serving certificate"));
    }
    // 1. A next CA is published.
    if now >= state.ca.lifetime.renew_at() {
        let (ca, key, pem) = new_ca(now, policy)?;
        data.insert(NEXT_CA_CRT.into(), pem.into_bytes());
        data.insert(NEXT_CA_KEY.into(), key.into_bytes());
        state.next = Some(Next { ca, published: now });
        write_bundle(&mut data, &state);
        return Ok(write(data, state, "the CA is two thirds through its life: the next CA joins the bundle"));
    }
    // Under the same CA: a serving certificate due, made for other names, or longer than allowed now.
    let cert = state.cert;
    let due = now >= cert.renew_at()
        || state.hosts != policy.hosts
        || cert.not_after > state.ca.lifetime.not_after
        || cert.not_after - now > policy.cert_validity.as_secs() as i64;
    if due {
        sign_serving(&mut data, &mut state, now, policy)?;
        return Ok(write(data, state, "a new serving certificate under the same CA"));
    }
    Ok(Step::Keep)
}

/// When [`plan`] has something to do next, at the latest: the earliest of the dates it waits for.
pub fn next_check(data: &Data, policy: &Policy) -> Option<i64> {
    let state = read(data)?;
    let settle = policy.settle.as_secs() as i64;
    let mut at = vec![state.cert.renew_at(), state.ca.lifetime.renew_at(), state.ca.lifetime.not_after];
    if let Some(previous) = &state.previous {
        at.push(previous.drop_at);
    }
    if let Some(next) = &state.next {
        at.push(next.published + settle);
    }
    at.into_iter().min()
}

fn write(mut data: Data, state: Rotation, why: &str) -> Step {
    data.insert(ROTATION.into(), serde_json::to_vec(&state).unwrap_or_default());
    Step::Write { data, why: why.into() }
}

/// The bundle: the CA, the next one being published, the previous one still trusted.
fn write_bundle(data: &mut Data, state: &Rotation) {
    let mut bundle = String::from_utf8_lossy(&data[CA_CRT]).into_owned();
    if state.next.is_some() {
        bundle.push_str(&String::from_utf8_lossy(&data[NEXT_CA_CRT]));
    }
    if let Some(previous) = &state.previous {
        bundle.push_str(&previous.pem);
    }
    data.insert(CA_BUNDLE.into(), bundle.into_bytes());
}

/// A new CA and serving certificate, trusting only that CA.
fn fresh(now: i64, policy: &Policy) -> Result<Data, Error> {
    let (ca, key, pem) = new_ca(now, policy)?;
    let mut data = Data::new();
    data.insert(CA_CRT.into(), pem.into_bytes());
    data.insert(CA_KEY.into(), key.into_bytes());
    let mut state = Rotation {
        ca,
        cert: Lifetime { issued: now, not_after: now },
        hosts: Vec::new(),
        next: None,
        previous: None,
    };
    sign_serving(&mut data, &mut state, now, policy)?;
    write_bundle(&mut data, &state);
    data.insert(ROTATION.into(), serde_json::to_vec(&state).unwrap_or_default());
    Ok(data)
}

fn datetime(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Clocks of the API server and of the replicas may differ a little: certificates are valid from a minute
/// before they are made.
const SKEW: i64 = 60;

fn ca_params(name: &str, lifetime: Lifetime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ebb");
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = datetime(lifetime.issued - SKEW);
    params.not_after = datetime(lifetime.not_after);
    params
}

/// A new CA: its description, key and certificate (PEM).
fn new_ca(now: i64, policy: &Policy) -> Result<(Ca, String, String), Error> {
    let lifetime = Lifetime { issued: now, not_after: now + policy.ca_validity.as_secs() as i64 };
    // Unique per CA (a second apart at least: rotations are far longer), readable in `openssl x509 -text`.
    let name = format!("ebb webhook CA {now}");
    let key = KeyPair::generate()?;
    let cert = ca_params(&name, lifetime).self_signed(&key)?;
    Ok((Ca { name, lifetime }, key.serialize_pem(), cert.pem()))
}

/// Signs a new serving certificate with the CA in `data`, for `policy`'s names, and records it in `state`.
fn sign_serving(data: &mut Data, state: &mut Rotation, now: i64, policy: &Policy) -> Result<(), Error> {
    let ca_key = KeyPair::from_pem(&String::from_utf8_lossy(&data[CA_KEY]))?;
    let issuer = Issuer::new(ca_params(&state.ca.name, state.ca.lifetime), ca_key);
    let not_after = (now + policy.cert_validity.as_secs() as i64).min(state.ca.lifetime.not_after);
    let mut params = CertificateParams::new(policy.hosts.clone())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ebb");
    dn.push(DnType::CommonName, policy.hosts.first().cloned().unwrap_or_else(|| "ebb-webhook".into()));
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = datetime(now - SKEW);
    params.not_after = datetime(not_after);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    data.insert(TLS_CRT.into(), cert.pem().into_bytes());
    data.insert(TLS_KEY.into(), key.serialize_pem().into_bytes());
    state.cert = Lifetime { issued: now, not_after };
    state.hosts = policy.hosts.clone();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn policy() -> Policy {
        Policy::new(
            Duration::from_secs(300 * DAY as u64),
            Duration::from_secs(30 * DAY as u64),
            vec!["ebb-webhook.ebb-system.svc".into(), "127.0.0.1".into()],
        )
    }

    fn step(data: &Data, now: i64, since: Option<i64>) -> Option<(Data, String)> {
        match plan(data, now, since, &policy()).unwrap() {
            Step::Keep => None,
            Step::Write { data, why } => Some((data, why)),
        }
    }

    fn state(data: &Data) -> Rotation {
        serde_json::from_slice(&data[ROTATION]).unwrap()
    }

    fn pems(data: &Data, key: &str) -> usize {
        String::from_utf8_lossy(&data[key]).matches("BEGIN CERTIFICATE").count()
    }

    #[test]
    fn an_empty_secret_gets_a_ca_and_a_certificate_for_the_names() {
        let (data, why) = step(&Data::new(), 1_000_000, None).unwrap();
        assert!(why.contains("new CA"), "{why}");
        for key in [TLS_CRT, TLS_KEY, CA_CRT, CA_KEY, CA_BUNDLE] {
            assert!(!data[key].is_empty(), "{key}");
        }
        assert_eq!(data[CA_BUNDLE], data[CA_CRT]);
        let state = state(&data);
        assert_eq!(state.hosts, policy().hosts);
        assert_eq!(state.cert.not_after - state.cert.issued, 30 * DAY);
        // The key loads into rustls, and the chain verifies for the names against the bundle.
        verify(&data, "ebb-webhook.ebb-system.svc", 1_000_000);
        verify(&data, "127.0.0.1", 1_000_000);
        // Nothing to do until the certificate is two thirds through.
        assert!(step(&data, 1_000_000 + 19 * DAY, Some(1_000_000)).is_none());
    }

    #[test]
    fn a_serving_certificate_is_renewed_under_the_same_ca_and_for_new_names() {
        let (data, _) = step(&Data::new(), 0, None).unwrap();
        let (renewed, why) = step(&data, 20 * DAY, Some(0)).unwrap();
        assert!(why.contains("same CA"), "{why}");
        assert_eq!(renewed[CA_CRT], data[CA_CRT]);
        assert_eq!(renewed[CA_BUNDLE], data[CA_BUNDLE]);
        assert_ne!(renewed[TLS_CRT], data[TLS_CRT]);
        verify(&renewed, "127.0.0.1", 20 * DAY);
        let mut other = policy();
        other.hosts.push("ebb-webhook.other.svc".into());
        let Step::Write { data: renamed, .. } = plan(&data, DAY, Some(0), &other).unwrap() else { panic!() };
        assert_eq!(state(&renamed).hosts, other.hosts);
    }

    #[test]
    fn a_ca_is_rotated_in_three_steps_each_waiting_for_the_last_to_settle() {
        let settle = policy().settle.as_secs() as i64;
        let (mut data, _) = step(&Data::new(), 0, None).unwrap();
        // Keep the serving certificate fresh on the way, as the leader would.
        let at = 200 * DAY;
        while let Some((next, _)) = step(&data, at - 1, Some(0)) {
            data = next;
        }
        let first_ca = data[CA_CRT].clone();
        // 1: published.
        let (published, why) = step(&data, at, Some(0)).unwrap();
        assert!(why.contains("next CA joins"), "{why}");
        assert_eq!(pems(&published, CA_BUNDLE), 2);
        assert_eq!(published[CA_CRT], first_ca, "the old CA still signs");
        // Not before the bundle is seen in force, and has been for `settle`.
        assert!(step(&published, at + settle, None).is_none());
        assert!(step(&published, at + settle, Some(at - 1)).is_none(), "an older bundle does not count");
        assert!(step(&published, at + settle - 1, Some(at)).is_none());
        // 2: the next CA signs; the old stays trusted.
        let (promoted, why) = step(&published, at + settle, Some(at)).unwrap();
        assert!(why.contains("takes over"), "{why}");
        assert_eq!(promoted[CA_CRT], published[NEXT_CA_CRT]);
        assert!(!promoted.contains_key(NEXT_CA_CRT));
        assert_eq!(pems(&promoted, CA_BUNDLE), 2);
        verify(&promoted, "127.0.0.1", at + settle);
        // 3: the old CA leaves once the new certificate has been served for `settle`.
        assert!(step(&promoted, at + 2 * settle - 1, Some(at + settle)).is_none());
        let (dropped, why) = step(&promoted, at + 2 * settle, Some(at + settle)).unwrap();
        assert!(why.contains("previous CA leaves"), "{why}");
        assert_eq!(pems(&dropped, CA_BUNDLE), 1);
        assert_eq!(dropped[CA_BUNDLE], dropped[CA_CRT]);
        verify(&dropped, "127.0.0.1", at + 2 * settle);
    }

    #[test]
    fn an_expired_ca_or_foreign_data_starts_over() {
        let (data, _) = step(&Data::new(), 0, None).unwrap();
        let (fresh, why) = step(&data, 300 * DAY, Some(0)).unwrap();
        assert!(why.contains("expired"), "{why}");
        assert_ne!(fresh[CA_CRT], data[CA_CRT]);
        let foreign = Data::from([(TLS_CRT.to_owned(), b"x".to_vec())]);
        assert!(step(&foreign, 0, None).unwrap().1.contains("no certificates yet"));
    }

    /// Checks with rustls' verifier (webpki) that the serving certificate chains to the bundle for `name`.
    fn verify(data: &Data, name: &str, now: i64) {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&data[CA_BUNDLE]) {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder(roots.into()).build().unwrap();
        let chain: Vec<CertificateDer> =
            CertificateDer::pem_slice_iter(&data[TLS_CRT]).map(Result::unwrap).collect();
        let time = UnixTime::since_unix_epoch(Duration::from_secs(now as u64));
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                time,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        super::super::tls::certified_key(&data[TLS_CRT], &data[TLS_KEY]).expect("rustls loads the pair");
    }
}
