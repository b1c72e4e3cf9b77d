//! The filter `/` types and `--filter` sets: text an EIP's address or its
//! ENI contains, in any case. The agent ranks only the EIPs it matches;
//! the view applies it too, so a screen follows the typing at once.

use std::net::Ipv4Addr;

/// Whether `filter` (empty: anything) is in the EIP's address or its ENI,
/// ignoring case.
pub fn matches(filter: &str, eip: Ipv4Addr, eni: &str) -> bool {
    if filter.is_empty() {
        return true;
    }
    let filter = filter.to_ascii_lowercase();
    eip.to_string().contains(&filter) || eni.to_ascii_lowercase().contains(&filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_address_or_the_eni_in_any_case() {
        let eip = Ipv4Addr::new(203, 0, 113, 10);
        assert!(matches("", eip, "eni-a"));
        assert!(matches("113.1", eip, "eni-a"));
        assert!(matches("203.0.113.10", eip, "eni-a"));
        assert!(matches("ENI-A", eip, "eni-a"));
        assert!(matches("Web", eip, "eni-WEB-1"));
        assert!(!matches("113.11", eip, "eni-a"));
        assert!(!matches("eni-b", eip, "eni-a"));
    }
}
