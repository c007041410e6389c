# Training rules are added with the trainer (issue 4).
