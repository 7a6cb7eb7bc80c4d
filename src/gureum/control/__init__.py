"""The registry: functions, versions, aliases and their code packages."""
