"""Extensions written the way a plugin package would write them, used by the registry tests."""
