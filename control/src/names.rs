//! Member ids: the rule every id must follow (a DNS label, `lb1`,
//! `misty-owl`) and the two-word ids, `adjective-animal`, generated from
//! built-in word lists when an operator gives none.

use rand::seq::SliceRandom;

const ADJECTIVES: &[&str] = &[
    "amber", "bold", "brave", "bright", "calm", "clever", "cosmic", "crisp", "dapper", "eager",
    "fancy", "fluffy", "gentle", "glad", "golden", "happy", "humble", "jolly", "keen", "kind",
    "lively", "lucky", "merry", "mighty", "misty", "noble", "plucky", "proud", "quick", "quiet",
    "rapid", "rosy", "shiny", "silent", "silver", "snowy", "steady", "sunny", "swift", "witty",
];

const ANIMALS: &[&str] = &[
    "badger", "bear", "beaver", "bison", "crane", "deer", "dolphin", "eagle", "falcon", "ferret",
    "finch", "fox", "gecko", "heron", "ibis", "koala", "lark", "lemur", "lynx", "marten", "mole",
    "moose", "newt", "otter", "owl", "panda", "puffin", "quail", "raven", "robin", "seal", "shrew",
    "sparrow", "stoat", "swan", "tiger", "toad", "viper", "walrus", "wolf",
];

/// Why `id` is not a member id, or `Ok`: a DNS label (RFC 1123), 1 to 63
/// of `a-z`, `0-9` and `-`, neither starting nor ending with `-`.
pub fn check(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("it is empty");
    }
    if id.len() > 63 {
        return Err("it is longer than 63 characters");
    }
    if id.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("it has uppercase letters; use lowercase");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("only a-z, 0-9 and '-' are allowed");
    }
    if id.starts_with('-') || id.ends_with('-') {
        return Err("it starts or ends with '-'");
    }
    Ok(())
}

/// The rule in one sentence, for error messages.
pub const RULE: &str = "a member id is a DNS label: 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-', like \"lb1\" or \"misty-owl\"";

/// A random id not in `taken`; `None` only if (nearly) every combination is used.
pub fn generate(taken: &[&str]) -> Option<String> {
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let id = format!(
            "{}-{}",
            ADJECTIVES.choose(&mut rng)?,
            ANIMALS.choose(&mut rng)?
        );
        if !taken.contains(&id.as_str()) {
            return Some(id);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_and_unique() {
        let mut taken: Vec<String> = Vec::new();
        for _ in 0..200 {
            let refs: Vec<&str> = taken.iter().map(String::as_str).collect();
            let id = generate(&refs).unwrap();
            assert!(!taken.contains(&id));
            let (a, b) = id.split_once('-').unwrap();
            assert!(a.bytes().all(|c| c.is_ascii_lowercase()));
            assert!(b.bytes().all(|c| c.is_ascii_lowercase()));
            assert_eq!(check(&id), Ok(()));
            taken.push(id);
        }
    }

    #[test]
    fn any_dns_label_is_an_id() {
        let long = "a".repeat(63);
        for good in [
            "misty-owl",
            "lb1",
            "a",
            "0",
            "web-01",
            "a-b-c",
            "a--b",
            &long,
        ] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        let too_long = "a".repeat(64);
        for bad in [
            "", "-lb", "lb-", "LB1", "lb_1", "lb.1", "mïsty", "a b", &too_long,
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
