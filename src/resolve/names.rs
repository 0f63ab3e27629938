//! The one translation table between Events API identity names and IDSync's.
//!
//! The Events API writes `user_identities.customer_id` and
//! `device_info.ios_advertising_id`; IDSync's `known_identities` calls the same
//! things `customerid` and `ios_idfa` (`shared/spec/mparticle.md` §2). Every
//! identity wsync can send is listed here once, with its IDSync name or `None`
//! when IDSync cannot search by it (`alias`, `amp_id`); nothing else in wsync
//! spells an IDSync name.

use crate::mapping::identity::{DeviceIdType, IdentityType};

/// An identity a batch can carry: a user identity or a device id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentityKey {
    /// `user_identities.<type>`.
    User(IdentityType),
    /// `device_info.<type>` (or the top-level `mp_deviceid`).
    Device(DeviceIdType),
}

impl IdentityKey {
    /// The Events API name (`customer_id`, `ios_advertising_id`, `mp_deviceid`).
    pub fn events_name(self) -> &'static str {
        match self {
            Self::User(t) => t.as_str(),
            Self::Device(t) => t.as_str(),
        }
    }

    /// The IDSync `known_identities` name, or `None` when IDSync has no such identity.
    pub fn idsync_name(self) -> Option<&'static str> {
        TABLE.iter().find(|(k, _)| *k == self).and_then(|(_, n)| *n)
    }

    /// The identity IDSync calls `name`.
    pub fn from_idsync_name(name: &str) -> Option<IdentityKey> {
        TABLE
            .iter()
            .find(|(_, n)| *n == Some(name))
            .map(|(k, _)| *k)
    }
}

use DeviceIdType as D;
use IdentityKey::{Device, User};
use IdentityType as U;

/// Events API identity → IDSync name. Every [`IdentityType`] and
/// [`DeviceIdType`] appears exactly once (a unit test checks it).
const TABLE: &[(IdentityKey, Option<&str>)] = &[
    (User(U::CustomerId), Some("customerid")),
    (User(U::Email), Some("email")),
    (User(U::Facebook), Some("facebook")),
    (User(U::Twitter), Some("twitter")),
    (User(U::Google), Some("google")),
    (User(U::Microsoft), Some("microsoft")),
    (User(U::Yahoo), Some("yahoo")),
    (
        User(U::FacebookCustomAudienceId),
        Some("facebookcustomaudienceid"),
    ),
    (User(U::Other), Some("other")),
    (User(U::OtherId(2)), Some("other_id_2")),
    (User(U::OtherId(3)), Some("other_id_3")),
    (User(U::OtherId(4)), Some("other_id_4")),
    (User(U::OtherId(5)), Some("other_id_5")),
    (User(U::OtherId(6)), Some("other_id_6")),
    (User(U::OtherId(7)), Some("other_id_7")),
    (User(U::OtherId(8)), Some("other_id_8")),
    (User(U::OtherId(9)), Some("other_id_9")),
    (User(U::OtherId(10)), Some("other_id_10")),
    (User(U::MobileNumber), Some("mobile_number")),
    (User(U::PhoneNumber2), Some("phone_number_2")),
    (User(U::PhoneNumber3), Some("phone_number_3")),
    // An alias is not an identity IDSync resolves.
    (User(U::Alias), None),
    (Device(D::AndroidUuid), Some("android_uuid")),
    (Device(D::IosAdvertisingId), Some("ios_idfa")),
    (Device(D::PushToken), Some("push_token")),
    (Device(D::IosIdfv), Some("ios_idfv")),
    (Device(D::AndroidAdvertisingId), Some("android_aaid")),
    // Amazon's amp_id is a device_info field IDSync does not take.
    (Device(D::AmpId), None),
    (Device(D::RokuAdvertisingId), Some("roku_aid")),
    (Device(D::RokuPublisherId), Some("roku_publisher_id")),
    (Device(D::MicrosoftAdvertisingId), Some("microsoft_aid")),
    (
        Device(D::MicrosoftPublisherId),
        Some("microsoft_publisher_id"),
    ),
    (Device(D::FireAdvertisingId), Some("fire_aid")),
    (Device(D::MpDeviceId), Some("device_application_stamp")),
];

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn every_key() -> Vec<IdentityKey> {
        let mut all: Vec<IdentityKey> = IdentityType::all().into_iter().map(User).collect();
        all.extend(DeviceIdType::ALL.into_iter().map(Device));
        all
    }

    #[test]
    fn every_identity_is_listed_once() {
        let keys = every_key();
        for key in &keys {
            let rows = TABLE.iter().filter(|(k, _)| k == key).count();
            assert_eq!(rows, 1, "{key:?} appears {rows} times");
        }
        assert_eq!(TABLE.len(), keys.len(), "the table lists something unknown");
    }

    #[test]
    fn idsync_names_are_distinct_and_round_trip() {
        let mut seen = HashSet::new();
        for key in every_key() {
            if let Some(name) = key.idsync_name() {
                assert!(seen.insert(name), "`{name}` is used twice");
                assert_eq!(IdentityKey::from_idsync_name(name), Some(key));
            }
        }
    }

    #[test]
    fn the_names_that_differ() {
        let pairs = [
            (User(U::CustomerId), "customer_id", "customerid"),
            (
                User(U::FacebookCustomAudienceId),
                "facebook_custom_audience_id",
                "facebookcustomaudienceid",
            ),
            (
                Device(D::IosAdvertisingId),
                "ios_advertising_id",
                "ios_idfa",
            ),
            (
                Device(D::AndroidAdvertisingId),
                "android_advertising_id",
                "android_aaid",
            ),
            (
                Device(D::RokuAdvertisingId),
                "roku_advertising_id",
                "roku_aid",
            ),
            (
                Device(D::FireAdvertisingId),
                "fire_advertising_id",
                "fire_aid",
            ),
            (
                Device(D::MpDeviceId),
                "mp_deviceid",
                "device_application_stamp",
            ),
        ];
        for (key, events, idsync) in pairs {
            assert_eq!(key.events_name(), events);
            assert_eq!(key.idsync_name(), Some(idsync));
        }
        assert_eq!(User(U::Email).idsync_name(), Some("email"));
        assert_eq!(User(U::Alias).idsync_name(), None);
        assert_eq!(Device(D::AmpId).idsync_name(), None);
        // An Events API spelling is not an IDSync name.
        assert_eq!(IdentityKey::from_idsync_name("customer_id"), None);
    }
}
