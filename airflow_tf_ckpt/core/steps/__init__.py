"""Steps of a checkpoint dir: discovery, selection and ordering."""
