"""Pure domain rules: entitlement rules and exam eligibility. Values in, values out; no database,
no Flask, no clock of their own."""
