//! mParticle's reserved identity names: user identities, device ids and `mpid`.
//!
//! This is the one table of identity names in wsync. Column names are matched
//! case-insensitively against [`IdentityType::from_column`] and
//! [`DeviceIdType::from_column`]; the Events API spelling is [`IdentityType::as_str`].
//! (IDSync spells some of them differently; its translation lives next to the
//! resolver that needs it.)

/// A `user_identities` key of the Events API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentityType {
    /// `customer_id` (columns `customer_id` or `customerid`).
    CustomerId,
    /// `email`
    Email,
    /// `facebook`
    Facebook,
    /// `twitter`
    Twitter,
    /// `google`
    Google,
    /// `microsoft`
    Microsoft,
    /// `yahoo`
    Yahoo,
    /// `facebook_custom_audience_id`
    FacebookCustomAudienceId,
    /// `other`
    Other,
    /// `other_id_2` … `other_id_10` (the number is 2..=10).
    OtherId(u8),
    /// `mobile_number`
    MobileNumber,
    /// `phone_number_2`
    PhoneNumber2,
    /// `phone_number_3`
    PhoneNumber3,
    /// `alias`
    Alias,
}

impl IdentityType {
    /// Every identity type, in the order the README lists them.
    pub fn all() -> Vec<IdentityType> {
        let mut all = vec![
            Self::CustomerId,
            Self::Email,
            Self::Facebook,
            Self::Twitter,
            Self::Google,
            Self::Microsoft,
            Self::Yahoo,
            Self::FacebookCustomAudienceId,
            Self::Other,
        ];
        all.extend((2..=10).map(Self::OtherId));
        all.extend([
            Self::MobileNumber,
            Self::PhoneNumber2,
            Self::PhoneNumber3,
            Self::Alias,
        ]);
        all
    }

    /// The Events API key.
    pub fn as_str(self) -> &'static str {
        const OTHER_IDS: [&str; 9] = [
            "other_id_2",
            "other_id_3",
            "other_id_4",
            "other_id_5",
            "other_id_6",
            "other_id_7",
            "other_id_8",
            "other_id_9",
            "other_id_10",
        ];
        match self {
            Self::CustomerId => "customer_id",
            Self::Email => "email",
            Self::Facebook => "facebook",
            Self::Twitter => "twitter",
            Self::Google => "google",
            Self::Microsoft => "microsoft",
            Self::Yahoo => "yahoo",
            Self::FacebookCustomAudienceId => "facebook_custom_audience_id",
            Self::Other => "other",
            Self::OtherId(n) => OTHER_IDS[usize::from(n.clamp(2, 10) - 2)],
            Self::MobileNumber => "mobile_number",
            Self::PhoneNumber2 => "phone_number_2",
            Self::PhoneNumber3 => "phone_number_3",
            Self::Alias => "alias",
        }
    }

    /// The identity a column of this name implicitly maps to (case-insensitive).
    /// `alias` is not implicit: mParticle's column rules do not list it, so a
    /// column named `alias` stays an attribute unless mapped explicitly.
    pub fn from_column(name: &str) -> Option<IdentityType> {
        let lower = name.to_ascii_lowercase();
        if lower == "customerid" {
            return Some(Self::CustomerId);
        }
        Self::all()
            .into_iter()
            .filter(|t| *t != Self::Alias)
            .find(|t| t.as_str() == lower)
    }

    /// The identity named by a destination path segment (`user_identities.<name>`),
    /// exact Events API spelling or `customerid`.
    pub fn from_destination(name: &str) -> Option<IdentityType> {
        if name == "customerid" {
            return Some(Self::CustomerId);
        }
        Self::all().into_iter().find(|t| t.as_str() == name)
    }
}

/// A `device_info` identity field (and `mp_deviceid`, which is top-level in the batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceIdType {
    /// `android_uuid`
    AndroidUuid,
    /// `ios_advertising_id`
    IosAdvertisingId,
    /// `push_token`
    PushToken,
    /// `ios_idfv`
    IosIdfv,
    /// `android_advertising_id`
    AndroidAdvertisingId,
    /// `amp_id`
    AmpId,
    /// `roku_advertising_id`
    RokuAdvertisingId,
    /// `roku_publisher_id`
    RokuPublisherId,
    /// `microsoft_advertising_id`
    MicrosoftAdvertisingId,
    /// `microsoft_publisher_id`
    MicrosoftPublisherId,
    /// `fire_advertising_id`
    FireAdvertisingId,
    /// `mp_deviceid`: a top-level batch field, not part of `device_info`.
    MpDeviceId,
}

impl DeviceIdType {
    /// Every device id type.
    pub const ALL: [DeviceIdType; 12] = [
        Self::AndroidUuid,
        Self::IosAdvertisingId,
        Self::PushToken,
        Self::IosIdfv,
        Self::AndroidAdvertisingId,
        Self::AmpId,
        Self::RokuAdvertisingId,
        Self::RokuPublisherId,
        Self::MicrosoftAdvertisingId,
        Self::MicrosoftPublisherId,
        Self::FireAdvertisingId,
        Self::MpDeviceId,
    ];

    /// The Events API field name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AndroidUuid => "android_uuid",
            Self::IosAdvertisingId => "ios_advertising_id",
            Self::PushToken => "push_token",
            Self::IosIdfv => "ios_idfv",
            Self::AndroidAdvertisingId => "android_advertising_id",
            Self::AmpId => "amp_id",
            Self::RokuAdvertisingId => "roku_advertising_id",
            Self::RokuPublisherId => "roku_publisher_id",
            Self::MicrosoftAdvertisingId => "microsoft_advertising_id",
            Self::MicrosoftPublisherId => "microsoft_publisher_id",
            Self::FireAdvertisingId => "fire_advertising_id",
            Self::MpDeviceId => "mp_deviceid",
        }
    }

    /// Whether the Events API schema requires this id to be a UUID
    /// (`8-4-4-4-12` hex digits). A malformed one fails the whole request with a
    /// 400, so the mapper drops it instead (counted as `invalid_device_id`).
    pub fn requires_uuid(self) -> bool {
        matches!(
            self,
            Self::IosAdvertisingId
                | Self::IosIdfv
                | Self::AndroidAdvertisingId
                | Self::RokuAdvertisingId
                | Self::RokuPublisherId
                | Self::FireAdvertisingId
                | Self::MpDeviceId
        )
    }

    /// The device id a column of this name maps to (case-insensitive).
    pub fn from_column(name: &str) -> Option<DeviceIdType> {
        let lower = name.to_ascii_lowercase();
        Self::ALL.into_iter().find(|t| t.as_str() == lower)
    }
}

/// `8-4-4-4-12` hexadecimal digits, as the Events API schema's `Uuid` pattern.
pub fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_pattern() {
        assert!(is_uuid("a0eebc99-9C0B-4ef8-bb6d-6bb9bd380a11"));
        assert!(!is_uuid("a0eebc999c0b4ef8bb6d6bb9bd380a11"));
        assert!(!is_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g"));
        assert!(DeviceIdType::IosIdfv.requires_uuid());
        assert!(!DeviceIdType::PushToken.requires_uuid());
    }

    #[test]
    fn customer_id_spellings_and_case() {
        assert_eq!(
            IdentityType::from_column("customerid"),
            Some(IdentityType::CustomerId)
        );
        assert_eq!(
            IdentityType::from_column("Customer_ID"),
            Some(IdentityType::CustomerId)
        );
        assert_eq!(
            IdentityType::from_column("EMAIL"),
            Some(IdentityType::Email)
        );
        assert_eq!(
            IdentityType::from_column("other_id_10"),
            Some(IdentityType::OtherId(10))
        );
        assert_eq!(IdentityType::from_column("other_id_11"), None);
        assert_eq!(IdentityType::from_column("alias"), None);
        assert_eq!(IdentityType::from_column("mpid"), None);
    }

    #[test]
    fn names_round_trip() {
        for t in IdentityType::all() {
            assert_eq!(IdentityType::from_destination(t.as_str()), Some(t));
        }
        for d in DeviceIdType::ALL {
            assert_eq!(
                DeviceIdType::from_column(&d.as_str().to_uppercase()),
                Some(d)
            );
        }
    }
}
