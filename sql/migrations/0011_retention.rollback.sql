DROP TABLE owner_retention;
