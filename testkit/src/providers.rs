//! Every provider herald talks to, as local fakes, and the flags that point
//! herald at them. Tests, the demo and the benchmarks share these.

use std::path::PathBuf;

use crate::fake::{FakeFcm, FakeTwilio, FakeVonage};

pub const ACCOUNT_SID: &str = "AC00000000000000000000000000000001";
pub const AUTH_TOKEN: &str = "test-auth-token";
/// An API key of the account, which the fake Twilio also accepts.
pub const API_KEY_SID: &str = "SK00000000000000000000000000000001";
pub const API_KEY_SECRET: &str = "test-api-key-secret";
pub const FROM: &str = "+15005550006";
pub const VONAGE_API_KEY: &str = "a1b2c3d4";
pub const VONAGE_API_SECRET: &str = "test-vonage-secret";
pub const VONAGE_FROM: &str = "herald";

pub struct Providers {
    pub twilio: FakeTwilio,
    /// Not in `args`: tests that want failover add `vonage_args`.
    pub vonage: FakeVonage,
    pub fcm: FakeFcm,
    /// The service-account key file for the fake FCM.
    pub credentials: PathBuf,
}

impl Providers {
    pub async fn start() -> Providers {
        let fcm = FakeFcm::start().await;
        let credentials = fcm.write_service_account(&std::env::temp_dir());
        let twilio = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN, (API_KEY_SID, API_KEY_SECRET)).await;
        Providers { twilio, vonage: FakeVonage::start(VONAGE_API_KEY, VONAGE_API_SECRET).await, fcm, credentials }
    }

    /// herald's provider flags for these fakes.
    pub fn args(&self) -> Vec<String> {
        [
            "--twilio-base-url",
            &self.twilio.base_url(),
            "--twilio-account-sid",
            ACCOUNT_SID,
            "--twilio-auth-token",
            AUTH_TOKEN,
            "--twilio-from",
            FROM,
            "--fcm-base-url",
            &self.fcm.base_url(),
            "--fcm-credentials",
            &self.credentials.display().to_string(),
        ]
        .map(str::to_owned)
        .into()
    }

    /// herald's flags for the fake Vonage, Twilio's failover.
    pub fn vonage_args(&self) -> Vec<String> {
        ["--vonage-base-url", &self.vonage.base_url(), "--vonage-api-key", VONAGE_API_KEY, "--vonage-api-secret", VONAGE_API_SECRET, "--vonage-from", VONAGE_FROM]
            .map(str::to_owned)
            .into()
    }
}
