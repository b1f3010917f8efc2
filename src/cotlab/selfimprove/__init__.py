"""The self-improving recipe's validations (the self-improving system), one module per job so a stage depends only on
what it runs: students' drafts (drafts), the draft ablations (ablations), the LLM judge of clarifying questions
(judge) and one self-guided DPO round (rounds)."""
