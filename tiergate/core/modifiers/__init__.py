"""Spec modifiers: one concern each, one signature `apply(spec, ctx)`, each idempotent.

A modifier edits only the spec it is given and reports every edit through
ctx.change (what, why) and every caller request the tier forbids through
ctx.escalation, which the tier turns into a clamp or a refusal.
"""
