//! A deserializer wrapper that bounds nesting depth and never pre-allocates.
//!
//! [`Limited`] wraps postcard's deserializer and every visitor, sequence, map, enum and seed
//! it hands out, so that each descent into a component (struct field, tuple or sequence
//! element, map key or value, enum payload, `Some`, newtype) spends one unit of a budget.
//! When the budget is spent the wrapper fails before recursing further, so a hostile frame
//! cannot drive the (recursive) derived `Deserialize` impls deep enough to overflow the stack.
//! Sequences and maps report no size hint, so no collection is pre-allocated from a length
//! prefix: memory grows only with elements actually decoded.
//!
//! The depth is counted exactly as [`super::ser::Checked`] counts it on the way out, so a
//! frame that encodes within a limit also decodes within it.

use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use super::{Fault, Guard};

/// Takes one step down: the budget left for the component, or an error when none is left.
fn descend<E: de::Error>(budget: usize, guard: &Guard) -> Result<usize, E> {
    match budget.checked_sub(1) {
        Some(left) => Ok(left),
        None => {
            guard.trip(Fault::TooDeep);
            Err(E::custom("nesting too deep"))
        }
    }
}

/// The wrapped deserializer; `budget` is how many levels may still be entered below the
/// value it is about to produce.
pub(super) struct Limited<'g, D> {
    pub(super) de: D,
    pub(super) budget: usize,
    pub(super) guard: &'g Guard,
}

impl<'g, D> Limited<'g, D> {
    fn wrap<V>(&self, visitor: V) -> Visit<'g, V> {
        Visit { visitor, budget: self.budget, guard: self.guard }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
                let visitor = self.wrap(visitor);
                self.de.$method(visitor)
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Limited<'_, D> {
    type Error = D::Error;

    forward_deserialize!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_map,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor);
        self.de.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor);
        self.de.deserialize_newtype_struct(name, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor);
        self.de.deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor);
        self.de.deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor);
        self.de.deserialize_struct(name, fields, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor);
        self.de.deserialize_enum(name, variants, visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// The wrapped visitor: leaves pass through, containers are wrapped in turn.
struct Visit<'g, V> {
    visitor: V,
    budget: usize,
    guard: &'g Guard,
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
                self.visitor.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Visit<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    forward_visit!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    );

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        let budget = descend(self.budget, self.guard)?;
        self.visitor.visit_some(Limited { de, budget, guard: self.guard })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        let budget = descend(self.budget, self.guard)?;
        self.visitor.visit_newtype_struct(Limited { de, budget, guard: self.guard })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_seq(Seq { seq, budget: self.budget, guard: self.guard })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_map(Map { map, budget: self.budget, guard: self.guard })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_enum(Enum { data, budget: self.budget, guard: self.guard })
    }
}

/// Deserializes one component of a container, one level down.
struct Seed<'g, S> {
    seed: S,
    budget: usize,
    guard: &'g Guard,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        let budget = descend(self.budget, self.guard)?;
        self.seed.deserialize(Limited { de, budget, guard: self.guard })
    }
}

struct Seq<'g, A> {
    seq: A,
    budget: usize,
    guard: &'g Guard,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.seq.next_element_seed(Seed { seed, budget: self.budget, guard: self.guard })
    }

    /// No hint: the length prefix is the sender's claim, so nothing is reserved for it.
    fn size_hint(&self) -> Option<usize> {
        None
    }
}

struct Map<'g, A> {
    map: A,
    budget: usize,
    guard: &'g Guard,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.map.next_key_seed(Seed { seed, budget: self.budget, guard: self.guard })
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.map.next_value_seed(Seed { seed, budget: self.budget, guard: self.guard })
    }

    fn size_hint(&self) -> Option<usize> {
        None
    }
}

struct Enum<'g, A> {
    data: A,
    budget: usize,
    guard: &'g Guard,
}

impl<'de, 'g, A: EnumAccess<'de>> EnumAccess<'de> for Enum<'g, A> {
    type Error = A::Error;
    type Variant = Variant<'g, A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let (value, variant) = self.data.variant_seed(VariantIndex { seed, guard: self.guard })?;
        Ok((value, Variant { variant, budget: self.budget, guard: self.guard }))
    }
}

/// Reads a variant index (postcard writes it as a `u32`) and records it when the enum does
/// not know it, so that the caller can report [`super::DecodeError::UnknownVariant`].
struct VariantIndex<'g, S> {
    seed: S,
    guard: &'g Guard,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for VariantIndex<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        let index = <u32 as de::Deserialize>::deserialize(de)?;
        let index_de: de::value::U32Deserializer<D::Error> = index.into_deserializer();
        self.seed.deserialize(index_de).inspect_err(|_| {
            self.guard.trip(Fault::UnknownVariant(index));
        })
    }
}

struct Variant<'g, A> {
    variant: A,
    budget: usize,
    guard: &'g Guard,
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Variant<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.variant.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.variant.newtype_variant_seed(Seed { seed, budget: self.budget, guard: self.guard })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.variant.tuple_variant(len, Visit { visitor, budget: self.budget, guard: self.guard })
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.variant
            .struct_variant(fields, Visit { visitor, budget: self.budget, guard: self.guard })
    }
}
