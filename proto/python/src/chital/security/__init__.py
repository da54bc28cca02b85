"""chital's fleet PKI and the TLS plumbing every server and client shares.

- :mod:`chital.security.pki`: the fleet CA and the certificate bundles it issues;
- :mod:`chital.security.tls`: gRPC credentials from a bundle, the peer identity of a call, and the
  rule that plaintext is only allowed on loopback.
"""
