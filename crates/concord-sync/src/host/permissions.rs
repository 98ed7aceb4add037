//! Who may do what with a model: the model's own grants, then its collection's defaults.

use concord_protocol::{PermissionGrants, Permissions, User};

use super::CollectionConfig;

/// A user's permissions on a model. In order: the model's grant for the user; the model's
/// world grant when it overrides its collection; the collection's grant for the user; the
/// collection's world permissions.
pub fn effective(
    user: &User,
    model: &PermissionGrants,
    collection: &CollectionConfig,
) -> Permissions {
    if let Some(granted) = model.users.get(&user.id) {
        return *granted;
    }
    if model.override_collection {
        return model.world;
    }
    collection.users.get(&user.id).copied().unwrap_or(collection.world)
}

/// Whether `user` may create models in the collection.
pub fn may_create(user: &User, collection: &CollectionConfig) -> bool {
    collection.world_create || collection.creators.contains(&user.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_protocol::UserId;

    fn user(id: &str) -> User {
        User { id: UserId(id.into()), display_name: None, anonymous: false }
    }

    const READ: Permissions =
        Permissions { read: true, write: false, remove: false, manage: false };

    #[test]
    fn model_grants_come_before_collection_defaults() {
        let mut collection = CollectionConfig { world: READ, ..CollectionConfig::default() };
        collection.users.insert(UserId("carol".into()), Permissions::NONE);
        let mut model = PermissionGrants::default();
        model.users.insert(UserId("alice".into()), Permissions::ALL);
        assert_eq!(effective(&user("alice"), &model, &collection), Permissions::ALL);
        assert_eq!(effective(&user("bob"), &model, &collection), READ);
        assert_eq!(effective(&user("carol"), &model, &collection), Permissions::NONE);
        model.override_collection = true;
        model.world = Permissions::NONE;
        assert_eq!(effective(&user("bob"), &model, &collection), Permissions::NONE);
        assert_eq!(effective(&user("alice"), &model, &collection), Permissions::ALL);
    }

    #[test]
    fn creation_needs_world_create_or_a_creator_grant() {
        let mut collection =
            CollectionConfig { world_create: false, ..CollectionConfig::default() };
        assert!(!may_create(&user("alice"), &collection));
        collection.creators.push(UserId("alice".into()));
        assert!(may_create(&user("alice"), &collection));
        assert!(!may_create(&user("bob"), &collection));
    }
}
