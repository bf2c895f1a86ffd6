//! What outsider JSON costs once parsed into a `serde_json::Value`, bounded before it is parsed.
//! Byte limits bound the text, not the tree: a non-empty object is a B-tree leaf of about 640
//! bytes however short its text (`{"":0},` is 7 bytes), so a 4 MiB document became about 420 MB
//! of `Value`, held while the server fetched the next document from a server that answered one
//! byte a second (attacker review). The text is counted instead, without parsing it.

/// Heap bytes charged per object or array (a B-tree leaf and its `Value`).
const PER_CONTAINER: usize = 672;
/// Heap bytes charged per member or element (a `Value`, and a key's `String`).
const PER_VALUE: usize = 56;

/// The most a request body may cost parsed ([`estimate`]): far above what real requests cost
/// (a presentation with a few JSON-LD credentials: well under 1 MiB).
pub const INBOUND_MAX: usize = 8 << 20;
/// The most a document another party sends (an offer, metadata, a request object, a DID
/// document, a credential response) may cost parsed: large issuer metadata costs 2–3 MiB.
pub const FETCHED_MAX: usize = 24 << 20;

/// An upper bound of the heap `text` takes parsed into a `Value`: its length, plus
/// [`PER_CONTAINER`] for every `{` and `[`, plus [`PER_VALUE`] for every `,` and `:`, counted also
/// inside strings and percent-encoded (`%7B`, `%5B`, `%2C`, `%3A`, as in a form body carrying
/// JSON): an overestimate for text that is not all structure, never an underestimate.
pub fn estimate(text: &[u8]) -> usize {
    let (mut containers, mut values) = (0usize, 0usize);
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'{' | b'[' => containers += 1,
            b',' | b':' => values += 1,
            b'%' if i + 2 < text.len() => match [text[i + 1], text[i + 2].to_ascii_uppercase()] {
                [b'7', b'B'] | [b'5', b'B'] => containers += 1,
                [b'2', b'C'] | [b'3', b'A'] => values += 1,
                _ => {}
            },
            _ => {}
        }
        i += 1;
    }
    text.len()
        .saturating_add(containers.saturating_mul(PER_CONTAINER))
        .saturating_add(values.saturating_mul(PER_VALUE))
}

/// `Err` with a reason when `text` would cost more than `max` parsed ([`estimate`]).
pub fn check(text: &[u8], max: usize) -> Result<(), String> {
    let cost = estimate(text);
    if cost > max {
        return Err(format!(
            "its JSON has too many objects, arrays and members: about {} MiB once read, over {} MiB",
            cost >> 20,
            max >> 20
        ));
    }
    Ok(())
}

/// Parses `bytes` as JSON once [`check`] has let them through (`max`): for JSON an outsider
/// hides from the request body's check (base64, encryption) and documents fetched beside it.
pub fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, String> {
    check(bytes, max)?;
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The estimate is never below what serde_json's `Value` takes for the worst shapes, and
    /// a real document stays far below the limits.
    #[test]
    fn small_objects_cost_what_they_take_parsed() {
        let objects = format!("[{}]", vec![r#"{"":0}"#; 20_000].join(","));
        assert!(estimate(objects.as_bytes()) > 20_000 * 640);
        assert!(check(objects.as_bytes(), INBOUND_MAX).is_err());
        let numbers = format!("[{}]", vec!["0"; 200_000].join(","));
        assert!(estimate(numbers.as_bytes()) > 200_000 * 32);
        // percent-encoded, as in a form body
        let form = format!("vp_token={}", "%7B%22%22%3A0%7D%2C".repeat(20_000));
        assert!(check(form.as_bytes(), INBOUND_MAX).is_err());
        // an issuer's metadata with 10 configurations of 40 claims each
        let claim = r#"{"path":["given_name"],"display":[{"name":"Given name","locale":"en-US"}]}"#;
        let config = format!(
            r#"{{"format":"dc+sd-jwt","vct":"urn:x","claims":[{}]}}"#,
            vec![claim; 40].join(",")
        );
        let meta = format!(
            r#"{{"credential_issuer":"https://i.example","credential_configurations_supported":{{{}}}}}"#,
            (0..10)
                .map(|i| format!(r#""c{i}":{config}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(estimate(meta.as_bytes()) < 4 << 20);
        assert!(check(meta.as_bytes(), INBOUND_MAX).is_ok());
    }
}
