use super::*;
use serde_json::json;

fn names() -> EventNames {
    EventNames::new([("premium_bought", "subscription_started")]).unwrap()
}

fn event(body: &Value) -> Result<Event, ParseError> {
    match parse(body.to_string().as_bytes(), &names())? {
        Webhook::Event(received) => Ok(received.event),
        Webhook::Verification { .. } => panic!("{body} parsed as a verification"),
    }
}

fn renewal() -> Value {
    json!({
        "profile_id": "00000000-0000-0000-0000-000000000001",
        "customer_user_id": "john.doe",
        "idfv": null,
        "advertising_id": "",
        "event_type": "subscription_renewed",
        "event_datetime": "2031-03-05T09:10:11.123456+0000",
        "event_api_version": 1,
        "something_adapty_adds_next_year": {"nested": [1, 2]},
        "event_properties": {
            "profile_event_id": "e-1",
            "store": "app_store",
            "environment": "Production",
            "vendor_product_id": "monthly",
            "price_usd": 9,
            "proceeds_usd": 6.99,
            "paywall_revision": "3",
            "subscription_expires_at": "2031-04-05T09:10:11.000000+0000",
            "cancellation_reason": null
        }
    })
}

#[test]
fn reads_a_lifecycle_event_leniently() {
    let e = event(&renewal()).unwrap();
    assert_eq!(&*e.id, "e-1");
    assert_eq!(&*e.profile_id, "00000000-0000-0000-0000-000000000001");
    assert_eq!(e.customer_user_id.as_deref(), Some("john.doe"));
    assert_eq!(e.event_type, Some(EventType::SubscriptionRenewed));
    assert_eq!(e.event_datetime.to_rfc3339(), "2031-03-05T09:10:11.123456Z");
    assert_eq!(e.vendor_product_id.as_deref(), Some("monthly"));
    assert_eq!(e.environment.as_deref(), Some("Production"));
    assert_eq!(
        e.subscription_expires_at.map(|t| t.to_rfc3339()),
        Some("2031-04-05T09:10:11.000000Z".to_owned())
    );
    assert_eq!(e.cancellation_reason, None);
    assert_eq!(e.snapshot, None);
}

#[test]
fn money_and_revisions_of_any_shape_are_accepted() {
    let mut body = renewal();
    body["event_properties"]["price_usd"] = json!("9.99");
    body["event_properties"]["paywall_revision"] = json!(3);
    body["event_properties"]["tax_amount_usd"] = json!(-1.5e300);
    assert!(event(&body).is_ok());
}

#[test]
fn reads_a_snapshot_from_event_properties_or_the_top_level() {
    let props = json!({
        "profile_event_id": "e-2",
        "access_level_id": "premium",
        "is_active": true,
        "expires_at": "2031-04-05T09:10:11.000000+0000",
        "will_renew": true,
        "is_lifetime": false,
        "is_in_grace_period": null,
        "is_refund": false,
    });
    let mut inside = renewal();
    inside["event_type"] = json!("access_level_updated");
    inside["event_properties"] = props.clone();
    let mut on_top = renewal();
    on_top["event_type"] = json!("access_level_updated");
    on_top.as_object_mut().unwrap().remove("event_properties");
    for (k, v) in props.as_object().unwrap() {
        on_top[k] = v.clone();
    }
    for body in [inside, on_top] {
        let snapshot = event(&body).unwrap().snapshot.expect("a snapshot");
        assert_eq!(&*snapshot.access_level_id, "premium");
        assert!(snapshot.is_active && snapshot.will_renew && !snapshot.is_in_grace_period);
    }
}

/// The shape one old page of Adapty's gives the `access_level_updated`: not wrapped in
/// the envelope, so no `event_type`, its fields at the top level.
#[test]
fn reads_a_flat_snapshot_without_event_type_as_an_access_level_update() {
    let flat = json!({
        "profile_id": "772204ce-ebf6-4ed9-82b0-d8688ab62b01",
        "customer_user_id": "john.doe",
        "profile_event_id": "e-flat",
        "event_datetime": "2023-02-10T17:22:03.000000+0000",
        "access_level_id": "premium",
        "is_active": true,
        "expires_at": "2031-04-05T09:10:11.000000+0000",
        "will_renew": true,
        "is_lifetime": false,
        "environment": "Production",
        "store": "app_store",
        "vendor_product_id": "org.locals.12345",
    });
    let Webhook::Event(received) = parse(flat.to_string().as_bytes(), &names()).unwrap() else {
        panic!("{flat} parsed as a verification");
    };
    assert_eq!(received.received_type, "access_level_updated");
    let event = received.event;
    assert_eq!(event.event_type, Some(EventType::AccessLevelUpdated));
    assert_eq!(&*event.id, "e-flat");
    assert_eq!(event.customer_user_id.as_deref(), Some("john.doe"));
    let snapshot = event.snapshot.expect("a snapshot");
    assert_eq!(&*snapshot.access_level_id, "premium");
    assert!(snapshot.is_active && snapshot.will_renew);

    // Without the level or without `is_active`, it is no snapshot: still refused.
    for missing in ["access_level_id", "is_active"] {
        let mut body = flat.clone();
        body.as_object_mut().unwrap().remove(missing);
        assert_eq!(
            parse(body.to_string().as_bytes(), &names()).unwrap_err(),
            ParseError::MissingField("event_type"),
            "without {missing}"
        );
    }
}

#[test]
fn a_snapshot_without_its_level_decides_nothing() {
    let mut body = renewal();
    body["event_type"] = json!("access_level_updated");
    body["event_properties"]["is_active"] = json!(true);
    assert_eq!(event(&body).unwrap().snapshot, None);
}

#[test]
fn renamed_and_unknown_types() {
    let mut body = renewal();
    body["event_type"] = json!("premium_bought");
    assert_eq!(
        event(&body).unwrap().event_type,
        Some(EventType::SubscriptionStarted)
    );
    body["event_type"] = json!("brand_new_type");
    assert_eq!(event(&body).unwrap().event_type, None);
}

#[test]
fn an_event_without_an_id_is_keyed_by_its_body() {
    let mut body = renewal();
    body["event_properties"]
        .as_object_mut()
        .unwrap()
        .remove("profile_event_id");
    let first = event(&body).unwrap().id;
    assert!(
        first.starts_with("sha256:") && first.len() == 7 + 64,
        "{first}"
    );
    assert_eq!(event(&body).unwrap().id, first);
    body["event_datetime"] = json!("2031-03-05T09:10:12.000000+0000");
    assert_ne!(event(&body).unwrap().id, first);
}

#[test]
fn verification_requests_of_both_generations() {
    for (body, check) in [
        ("{}", None),
        (r#"{"adapty_check":"abc"}"#, Some(json!("abc"))),
    ] {
        match parse(body.as_bytes(), &names()).unwrap() {
            Webhook::Verification { adapty_check } => assert_eq!(adapty_check, check),
            Webhook::Event(_) => panic!("{body} parsed as an event"),
        }
    }
}

#[test]
fn refuses_what_cannot_be_processed_naming_the_field() {
    let refuse = |body: &[u8]| parse(body, &names()).unwrap_err();
    assert_eq!(refuse(b"not json").code(), "invalid_json");
    assert_eq!(refuse(b"\xff\xfe").code(), "invalid_json");
    assert_eq!(refuse(b"[1,2]").code(), "not_an_object");

    let mutate = |path: &[&str], value: Option<Value>| {
        let mut body = renewal();
        let mut at = &mut body;
        for key in &path[..path.len() - 1] {
            at = &mut at[*key];
        }
        let last = path[path.len() - 1];
        match value {
            Some(v) => at[last] = v,
            None => {
                at.as_object_mut().unwrap().remove(last);
            }
        }
        parse(body.to_string().as_bytes(), &names()).unwrap_err()
    };
    assert_eq!(
        mutate(&["profile_id"], None),
        ParseError::MissingField("profile_id")
    );
    assert_eq!(
        mutate(&["event_type"], None),
        ParseError::MissingField("event_type")
    );
    assert_eq!(
        mutate(&["event_datetime"], None),
        ParseError::MissingField("event_datetime")
    );
    assert_eq!(
        mutate(&["profile_id"], Some(json!(5))),
        invalid("profile_id", "a string")
    );
    assert_eq!(
        mutate(&["event_datetime"], Some(json!("yesterday"))).code(),
        "invalid_field"
    );
    let err = mutate(
        &["event_properties", "subscription_expires_at"],
        Some(json!(12)),
    );
    assert_eq!(err.code(), "invalid_field");
    assert!(
        err.to_string()
            .contains("event_properties.subscription_expires_at"),
        "{err}"
    );
    assert_eq!(
        mutate(&["event_properties"], Some(json!("x"))).code(),
        "invalid_field"
    );
}

#[test]
fn refuses_a_snapshot_with_wrong_types() {
    let mut body = renewal();
    body["event_type"] = json!("access_level_updated");
    body["event_properties"]["access_level_id"] = json!("premium");
    body["event_properties"]["is_active"] = json!("yes");
    let err = event(&body).unwrap_err();
    assert_eq!(err, invalid("event_properties.is_active", "true or false"));
}

#[test]
fn fields_are_read_once_and_only_from_objects() {
    let parsed = |body: &str| parse(body.as_bytes(), &names());
    let event = r#""event_type":"subscription_renewed","profile_id":"p","event_datetime":"2031-03-05T09:10:11.123456+0000""#;
    // An array in place of event_properties is not read as its fields in order.
    let err = parsed(&format!(r#"{{{event},"event_properties":["e1","p"]}}"#)).unwrap_err();
    assert_eq!(err, invalid("event_properties", "an object"));
    // A field entitled reads, given twice, is ambiguous: refused, not "the last wins".
    let err = parsed(&format!(r#"{{{event},"profile_id":"q"}}"#)).unwrap_err();
    assert_eq!(err.code(), "invalid_json", "{err}");
    // Fields it does not read may repeat, as they may hold anything.
    let ok = parsed(&format!(r#"{{{event},"idfa":"a","idfa":"b"}}"#));
    assert!(matches!(ok, Ok(Webhook::Event(_))), "{ok:?}");
}
