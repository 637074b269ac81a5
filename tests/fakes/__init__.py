"""In-process fakes of outside services, answering in the real services' HTTP shapes."""
