"""Config presets (`tiny`, `small`, `full`) shipped with the package; see zero_chatgpt.config."""
