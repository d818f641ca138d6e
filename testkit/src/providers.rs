//! Every provider herald talks to, as local fakes, and the flags that point
//! herald at them. Tests, the demo and the benchmarks share these.

use std::path::PathBuf;

use crate::fake::{FakeFcm, FakeTwilio};

pub const ACCOUNT_SID: &str = "AC00000000000000000000000000000001";
pub const AUTH_TOKEN: &str = "test-auth-token";
/// An API key of the account, which the fake Twilio also accepts.
pub const API_KEY_SID: &str = "SK00000000000000000000000000000001";
pub const API_KEY_SECRET: &str = "test-api-key-secret";
pub const FROM: &str = "+15005550006";

pub struct Providers {
    pub twilio: FakeTwilio,
    pub fcm: FakeFcm,
    /// The service-account key file for the fake FCM.
    pub credentials: PathBuf,
}

impl Providers {
    pub async fn start() -> Providers {
        let fcm = FakeFcm::start().await;
        let credentials = fcm.write_service_account(&std::env::temp_dir());
        Providers { twilio: FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await, fcm, credentials }
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
}
