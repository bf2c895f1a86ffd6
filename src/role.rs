//! The roles a node can run: a runtime enum present in every build; cargo features decide which
//! are compiled in. Low in the house (config parses role lists), so it lives outside `roles/`.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Issuer,
    Verifier,
    Wallet,
    Mediator,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Issuer, Role::Verifier, Role::Wallet, Role::Mediator];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Issuer => "issuer",
            Role::Verifier => "verifier",
            Role::Wallet => "wallet",
            Role::Mediator => "mediator",
        }
    }

    /// Whether this build carries the role's code.
    pub fn is_compiled_in(self) -> bool {
        match self {
            Role::Issuer => cfg!(feature = "issuer"),
            Role::Verifier => cfg!(feature = "verifier"),
            Role::Wallet => cfg!(feature = "wallet"),
            Role::Mediator => cfg!(feature = "mediator"),
        }
    }

    pub fn compiled_in() -> Vec<Role> {
        Role::ALL
            .into_iter()
            .filter(|r| r.is_compiled_in())
            .collect()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!(
                    "unknown role `{s}`; valid roles are: {}",
                    Role::ALL.map(Role::as_str).join(", ")
                )
            })
    }
}

/// Parses `all` or a comma-separated role list and checks each role is compiled into this build.
pub fn parse_role_list(spec: &str) -> Result<Vec<Role>, String> {
    let spec = spec.trim();
    if spec.is_empty() || spec.eq_ignore_ascii_case("all") {
        return Ok(Role::compiled_in());
    }
    let mut roles = Vec::new();
    for part in spec.split(',').filter(|p| !p.trim().is_empty()) {
        let role: Role = part.parse()?;
        if !role.is_compiled_in() {
            return Err(format!(
                "role `{role}` is not compiled into this build; this build has: {}",
                compiled_names()
            ));
        }
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    if roles.is_empty() {
        return Err("no role selected".into());
    }
    roles.sort();
    Ok(roles)
}

fn compiled_names() -> String {
    Role::compiled_in()
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The cargo features this binary was built with, for `--version`.
pub fn compiled_features() -> Vec<&'static str> {
    let mut f = Vec::new();
    for (on, name) in [
        (cfg!(feature = "issuer"), "issuer"),
        (cfg!(feature = "verifier"), "verifier"),
        (cfg!(feature = "wallet"), "wallet"),
        (cfg!(feature = "mediator"), "mediator"),
        (cfg!(feature = "cluster"), "cluster"),
        (cfg!(feature = "redis"), "redis"),
        (cfg!(feature = "swagger-ui"), "swagger-ui"),
    ] {
        if on {
            f.push(name);
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_means_every_compiled_role() {
        assert_eq!(parse_role_list("all").unwrap(), Role::compiled_in());
        assert_eq!(parse_role_list("").unwrap(), Role::compiled_in());
    }

    #[test]
    fn unknown_role_is_an_error_naming_valid_roles() {
        // a compiled role first (in a single-role build `issuer` would fail as not compiled in)
        let e = parse_role_list(&format!("{},bogus", Role::compiled_in()[0])).unwrap_err();
        assert!(e.contains("bogus") && e.contains("verifier"), "{e}");
    }

    #[cfg(all(feature = "issuer", feature = "verifier"))]
    #[test]
    fn subset_is_sorted_and_deduplicated() {
        assert_eq!(
            parse_role_list("verifier, issuer,verifier").unwrap(),
            vec![Role::Issuer, Role::Verifier]
        );
    }

    #[cfg(not(feature = "wallet"))]
    #[test]
    fn role_not_compiled_in_is_refused() {
        let e = parse_role_list("wallet").unwrap_err();
        assert!(e.contains("not compiled"), "{e}");
    }
}
