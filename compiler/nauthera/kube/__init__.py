"""The in-cluster operator (SPEC section 7): watch AuthPolicies and AuthClients, compile, evaluate with the
real OPA, write status and Events, apply Gatekeeper objects, validate AuthPolicies at admission."""
